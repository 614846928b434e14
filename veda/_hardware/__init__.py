"""Facts about the machine, in one place: CPU threads, affinity and the threading layer
(:mod:`.cpu`), the load other processes put on the cores (:mod:`.load`), and the GPU: whether
one is here, device arrays, measured transfer costs and the device buffer pool (:mod:`.gpu`).

Nothing here imports a kernel, a target or the dispatcher; those ask this layer.
"""
