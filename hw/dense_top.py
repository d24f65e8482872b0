"""The dense int8 baseline accelerator: the SD accelerator with a dense weight path.

`DenseAccelerator(config)` has exactly the ports, register map, stream protocol,
activation layout, window generator, MAC lanes, requantization and controller of
`hw.top.SDAccelerator`; only the weight path differs: every row of every filter is
stored as ``lanes x S`` plain int8 weights, one word per (group, row) in a weight memory
of ``ce_depth`` words (``hw.datapath.dense_word_bits``), read by
`hw.dense.DenseRowReader` instead of the sparse decoder and the basis array.  It has no
basis memory (stream memory id 1 is rejected) and its ID register reads
``hw.host.ID_DENSE``.  It is the reference for every area, memory and energy
comparison: same MAC throughput per cycle, no rebuild and no row skipping.
"""

from __future__ import annotations

from hw.config import SDConfig
from hw.top import AcceleratorTop

__all__ = ["DenseAccelerator"]


class DenseAccelerator(AcceleratorTop):
    """The dense int8 baseline (`AcceleratorTop` of kind ``"dense"``).

    ``init`` / ``init_files`` name the memories ``"dense"`` and ``"quant"``.
    """

    def __init__(self, config: SDConfig, **kwargs):
        super().__init__(config, "dense", **kwargs)
