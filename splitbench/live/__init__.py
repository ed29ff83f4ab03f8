"""Live co-inference: a real device process and edge server over a (shaped) TCP link.

``protocol`` is the framed wire format, ``server`` the asyncio edge server (``python -m
splitbench.serve``) with ``pool`` / ``worker`` (the killable compute processes) and ``options`` (what
a remote client may set), ``client`` the device side, ``fuzz`` hostile frames against a server, ``shaping`` the netns + veth + tc link,
``runner`` the ``mode=live`` runner hook, ``validate`` and ``load`` the link validation and the
bounded load test. Importing this package stays light: modules import torch only where they serve.
"""
