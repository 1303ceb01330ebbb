FROM unikernel AS k
MODULE net virtio-net fs2 a
MODULE Net 9p virtio_net -x net.tcp
MODULE
APP
APP /a /b
APP --static /a
