"""Default CPU schedules for the TVM kernels that tuning does not cover.

Relax lowers every operator to a plain loop nest that runs in one thread. MetaSchedule tunes
the convolutions, but a detector also has ~130 small kernels (box decoding, gathers, top-k,
RoIAlign, NMS) and the box head's matmuls, whose row count is the number of RoIs NMS kept: a
symbolic shape that MetaSchedule 0.27 cannot tune (its trace replay fails on the dynamic
loop). These rules give all of them a schedule: the box head's matmuls a register-tiled,
cache-blocked, parallel one; every other kernel parallel leading spatial loops; reductions
and GEMVs TVM's own dlight CPU rules.
"""

from __future__ import annotations

# the box head matmul's schedule: a row times 64 columns (four AVX-512 vectors of
# accumulators) per step, k in blocks of 256 so that the 256 x 64 panel of the weight (64 KB)
# stays in cache while every row passes over it; column blocks in parallel. No row tiling: the
# row count is symbolic and a partial row tile's guard costs more than the tile gains here.
MATMUL_COLS, MATMUL_LANES, MATMUL_K = 64, 16, 256


def cpu_default_schedule():
    """A pass scheduling every not yet scheduled PrimFunc of a Relax module for the CPU
    (tuned kernels are marked scheduled and left alone)."""
    from tvm.s_tir import dlight

    return dlight.ApplyDefaultSchedule(
        _cpu_rule(_schedule_matmul),
        dlight.cpu.Reduction(),
        dlight.cpu.GEMV(),
        _cpu_rule(_schedule_parallel),
    )


def _parallel_leading_spatial(sch, info) -> bool:
    """Run a block's leading spatial loops, fused, in parallel; False where there are none."""
    from tvm import tirx

    loops = sch.get_loops(info.block_rv)
    kinds = info.dom_kind()
    leading = len(kinds) - len(kinds.lstrip("S"))
    if leading == 0 or len(loops) < leading:
        return False
    fused = sch.fuse(*loops[:leading]) if leading > 1 else loops[0]
    extent = sch.get(fused).extent
    if isinstance(extent, tirx.IntImm) and extent.value < 2:
        return False
    sch.parallel(fused)
    return True


def _cpu_rule(schedule):
    """A dlight CPU rule from `schedule(sch, blocks) -> bool` (False: not its kind of kernel)."""
    from tvm import s_tir, tirx
    from tvm.s_tir import dlight
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    class Rule(CPUScheduleRule):
        def apply(self, func, target, _tunable):
            if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
                return None
            sch = s_tir.Schedule(func)
            blocks = dlight.normalize_prim_func(sch)
            return sch if blocks is not None and schedule(sch, blocks) else None

    return Rule()


def _schedule_parallel(sch, blocks) -> bool:
    changed = [_parallel_leading_spatial(sch, info) for info in blocks]  # every block
    return any(changed)


def _schedule_matmul(sch, infos) -> bool:
    """C[i, j] = sum_k A[i, k] B[k, j], then element-wise epilogues (bias, ReLU)."""
    from tvm import tirx

    matmuls = [b for b in infos if b.dom_kind() == "SSR"]
    if len(matmuls) != 1 or not _is_row_major_matmul(sch.get(matmuls[0].block_rv)):
        return False
    block = matmuls[0].block_rv
    i, j, k = sch.get_loops(block)
    columns = sch.get(j).extent
    ko, ki = sch.split(k, [None, MATMUL_K])
    if isinstance(columns, tirx.IntImm) and columns.value % MATMUL_COLS == 0:
        jo, jm, ji = sch.split(j, [None, MATMUL_COLS // MATMUL_LANES, MATMUL_LANES])
        sch.reorder(jo, ko, i, ki, jm, ji)
        sch.vectorize(ji)
        sch.unroll(jm)
        sch.parallel(jo)
    else:  # a few columns (the class scores): rows in parallel, columns innermost
        sch.reorder(i, ko, ki, j)
        sch.parallel(i)
    sch.decompose_reduction(block, ko)
    for info in infos:
        if info.block_rv != block and info.is_injective():
            _parallel_leading_spatial(sch, info)
    return True


def _is_row_major_matmul(block) -> bool:
    """reads A[i, k] and B[k, j], writes C[i, j] (the exported box head's layout)."""
    if len(block.iter_vars) != 3 or len(block.reads) != 2 or len(block.writes) != 1:
        return False
    i, j, k = (v.var for v in block.iter_vars)

    def indexed_by(region, expected) -> bool:
        starts = [r.min for r in region.region]
        return len(starts) == 2 and all(s.same_as(e) for s, e in zip(starts, expected, strict=True))

    a, b = block.reads
    return indexed_by(a, [i, k]) and indexed_by(b, [k, j]) and indexed_by(block.writes[0], [i, j])
