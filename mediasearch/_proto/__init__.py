"""Generated gRPC stubs (``make proto``: grpcio-tools over ``proto/``; never edited, not committed).

``proto/mediasearch/v1/x.proto`` is compiled with the virtual include path
``mediasearch/_proto=proto``, so it becomes ``mediasearch._proto.mediasearch.v1.x_pb2`` and the
generated imports resolve inside this package instead of colliding with ``mediasearch`` itself.
"""
