"""Benchmarks of the SmartDeal toolchain (`smartdeal bench`).

One module per section (`decompose_speed`, `accuracy`, `sweep`, `rtl`, `energy_report`,
`fpga`), the runner that collects them into ``bench/results.json`` with a pass/fail flag
per target (`runner`, `core`, `targets`), and the generator of ``docs/results.md``
(`report`).
"""
