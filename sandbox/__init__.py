"""Local sandbox hosts: Debian 12 with systemd as PID 1, booted with systemd-nspawn.

``image.ensure_image()`` builds (once) the root filesystem; ``hosts.boot()`` boots
throw-away copies reachable over SSH on veth links; ``hosts.shutdown()`` stops them.
The CLI is ``python -m sandbox {image,up,down,status}``.
"""
