"""Local sandbox hosts: Debian 13 (or 12, 14: SANDBOX_DEBIAN) with systemd as PID 1, booted with systemd-nspawn.

``image.ensure_image()`` builds (once) the root filesystem; ``hosts.boot()`` boots
hosts from it, each on a throw-away overlay and reachable over SSH on its own veth
link; ``hosts.run()`` runs a command on one; ``hosts.shutdown()`` stops them.
The CLI is ``python -m sandbox {image,up,down,status,prune}``.
"""
