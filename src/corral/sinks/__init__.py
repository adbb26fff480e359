"""Sinks: where the outbox delivers corral's decisions (a farm manager, a command, a webhook).

`config` reads and checks the sinks file and builds the sinks; `command` and `webhook`
are the generic ones; Afanasy's native sink is `corral.afanasy.sink`; a studio adds its
own through the `corral.sinks` entry point group.  Each implements `corral.ports.Sink`.
"""
