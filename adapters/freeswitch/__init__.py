"""FreeSWITCH adapter: sans-IO ESL codec, pure event/command mapping, trio links (inbound and
outbound), several nodes, device presence. See docs/freeswitch.md."""
