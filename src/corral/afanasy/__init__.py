"""Afanasy (CGRU), corral's native farm manager, both ways.

- `wire`: the protocol (``AFANASY <len> JSON`` + a JSON body over TCP) and its errors;
- `errorhosts`, `masks`, `mapping`: pure: Afanasy's replies as corral's `Farm` and an
  `Index` back to Afanasy's ids; its error-host text; its host masks;
- `source`: one whole read of the farm (`read_farm`, `AfanasyReader` for ``--farm``);
- `sink`: corral's actions delivered as Afanasy actions (`AfanasySink`).

docs/afanasy.md is the wrangler's guide and says what is approximated.
"""
