"""Multi-core execution without a runtime: kernels split work through a host-supplied parallel-for.

The library links no libc and starts no threads. The host may install a parallel-for
(``docs/abi.md``)::

    typedef void (*mcir_task_fn)(void *body_ctx, int64_t task);
    typedef void (*mcir_parallel_fn)(void *ctx, mcir_task_fn body, void *body_ctx, int64_t n_tasks);
    void mcir_NAME_set_parallel(mcir_parallel_fn fn, void *ctx, int32_t n_threads);

``fn(ctx, body, body_ctx, n)`` must call ``body(body_ctx, t)`` exactly once for every
``t`` in ``[0, n)``, on any threads, in any order, and return when all have returned (the
shape of pthreadpool's ``parallelize_1d``). Without a hook, or with ``n_threads <= 1``,
every kernel runs on the calling thread, exactly as before.

A kernel that splits (``parallel_for``) moves its work into a separate *task function*
``body(ctx, t)`` over a range of independent units (GEMM column panels): each unit's
outputs are written by exactly one task and computed by the same instruction sequence
whatever the range, so no reduction is ever split and results are bit-identical for any
thread count. The kernel's pointers travel in a small struct on the caller's stack. A kernel
gives the hook up to ``TASKS_PER_THREAD`` tasks per thread, so that the pool's dynamic claiming
evens out threads that start late.
"""

from __future__ import annotations

from collections.abc import Callable

import llvmlite.ir as ir

from mcir.codegen.emit import I32, I64, PTR, Emitter, i64

# Below this many multiply-adds a kernel stays on the calling thread: handing work to a pool costs a
# few microseconds even with spinning workers (tens when one sleeps), about what one core does with
# 2^20 MACs.
MIN_PARALLEL_MACS = 1 << 20

# Tasks per thread: more tasks than threads let a thread that starts late (a worker that was asleep,
# or preempted on a shared machine) be covered by the others claiming its share; each task still
# covers a contiguous range of at least one unit.
TASKS_PER_THREAD = 4

# A task below this many multiply-adds costs more to hand out than it saves
MIN_TASK_MACS = 1 << 18

# Work of one element of a memory-bound kernel (an element-wise op, a copy), in multiply-add
# equivalents for the thresholds above: one core moves an element in roughly the time of 16 MACs,
# so element-wise kernels split from 64 Ki elements on
ELEMENT_WORK = 16

_HOOK_FN = "mcir.parallel.fn"
_HOOK_CTX = "mcir.parallel.ctx"
_HOOK_N = "mcir.parallel.n"

TASK_FN_TYPE = ir.FunctionType(ir.VoidType(), [PTR, I64])
PARALLEL_FN_TYPE = ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR, I64])


class _HookLoad(ir.LoadInstr):
    """A load of the hook pointer, callable as a ``mcir_parallel_fn``."""

    function_type = PARALLEL_FN_TYPE


def _hook_global(module: ir.Module, name: str, ty: ir.Type) -> ir.GlobalVariable:
    """The library's one piece of mutable state: the installed hook (zero = none)."""
    if name in module.globals:
        return module.globals[name]
    gv = ir.GlobalVariable(module, ty, name)
    gv.linkage = "internal"
    gv.initializer = ir.Constant(ty, None)
    return gv


def hook_globals(module: ir.Module) -> tuple[ir.GlobalVariable, ir.GlobalVariable, ir.GlobalVariable]:
    """(fn, ctx, n_threads) globals of the parallel hook, created on first use."""
    return _hook_global(module, _HOOK_FN, PTR), _hook_global(module, _HOOK_CTX, PTR), _hook_global(module, _HOOK_N, I32)


def emit_set_parallel(module: ir.Module, name: str) -> None:
    """The exported ``mcir_NAME_set_parallel(fn, ctx, n_threads)``: stores the hook.

    A NULL ``fn`` or ``n_threads <= 1`` turns threading off. Not to be called while a run
    is in progress (it is a plain store, like configuring any library before use).
    """
    fn_g, ctx_g, n_g = hook_globals(module)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, I32]), f"mcir_{name}_set_parallel")
    fn.attributes.add("nounwind")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    hook, ctx, n = fn.args
    off = b.or_(b.icmp_unsigned("==", hook, ir.Constant(PTR, None)), b.icmp_signed("<=", n, ir.Constant(I32, 1)))
    b.store(b.select(off, ir.Constant(PTR, None), hook), fn_g)
    b.store(ctx, ctx_g)
    b.store(b.select(off, ir.Constant(I32, 1), n), n_g)
    b.ret_void()


def _split_functions(module: ir.Module) -> set[str]:
    """Names of the task and body functions ``parallel_for`` made in ``module``."""
    if not hasattr(module, "_mcir_split_functions"):
        module._mcir_split_functions = set()
    return module._mcir_split_functions


def parallel_for(
    em: Emitter,
    name: str,
    units: int,
    macs: int,
    pointers: list[ir.Value],
    body: Callable[..., None],
    slots: int | None = None,
) -> None:
    """Run ``body(em, pointers, lo, hi)`` over ``[0, units)``, split across the host's threads.

    ``body`` emits the work for units ``[lo, hi)`` using only ``pointers`` (re-read inside the
    task function: values of the calling function are not visible there) and compile-time
    constants; it is emitted twice, into the task function and inline for the single-threaded
    case, both times through ``em`` (its builder is moved into the task function meanwhile).
    With fewer than two units or less than ``MIN_PARALLEL_MACS`` of work, the body
    is emitted inline over the whole range and no hook is consulted.

    The hook gets ``min(TASKS_PER_THREAD * n_threads, units, macs / MIN_TASK_MACS)`` tasks. With
    ``slots``, at most ``slots`` tasks run and ``body`` gets a fifth argument, the task index in
    ``[0, slots)`` (0 when inline): tasks may run at the same time, so a kernel that needs private
    scratch per task keeps ``slots`` copies of it and uses copy ``slot``.
    """
    # inside another kernel's task (a split kernel whose body uses a splitting helper): inline, as a
    # host's parallel-for need not be re-entrant
    nested = em.b.function.name in _split_functions(em.module)
    if units < 2 or macs < MIN_PARALLEL_MACS or nested:
        if slots is None:
            body(em, pointers, i64(0), i64(units))
        else:
            body(em, pointers, i64(0), i64(units), i64(0))
        return
    module = em.module
    cap = min(units, max(2, macs // MIN_TASK_MACS), slots if slots is not None else units)

    task = ir.Function(module, TASK_FN_TYPE, module.get_unique_name(f"{name}.task"))
    task.linkage = "internal"
    task.attributes.add("nounwind")
    # the task is emitted by the caller's own builder, moved into the task function and back: code
    # that captured the emitter or its builder (an epilogue, an element function) emits into the task
    # The body goes into its own function whose pointer parameters are ``noalias``, as the kernel's
    # are, inlined into the task: pointers loaded from the block would otherwise be assumed to alias,
    # and loops the kernel vectorises would stay scalar in the task (a head permute ran 1.5x slower)
    body_fn = ir.Function(
        module,
        ir.FunctionType(ir.VoidType(), [PTR] * len(pointers) + [I64] * 3),
        module.get_unique_name(f"{name}.body"),
    )
    _split_functions(module).update((task.name, body_fn.name))
    body_fn.linkage = "internal"
    body_fn.attributes.add("nounwind")
    body_fn.attributes.add("alwaysinline")
    for a in body_fn.args[: len(pointers)]:
        a.add_attribute("noalias")
    b = em.b
    here = b.block
    b.position_at_end(body_fn.append_basic_block("entry"))
    *ptrs, lo, hi, slot = body_fn.args
    if slots is None:
        body(em, list(ptrs), lo, hi)
    else:
        body(em, list(ptrs), lo, hi, slot)
    b.ret_void()

    b.position_at_end(task.append_basic_block("entry"))
    ctx, t = task.args
    # the struct: slot 0 the task count, then the pointers, each slot an i64 (pointers widened)
    n_tasks = em.load(ctx, 0, I64, align=8)
    loaded = [b.inttoptr(em.load(ctx, i + 1, I64, align=8), PTR) for i in range(len(pointers))]
    # an even split: unit ranges differ in length by at most one
    lo = b.sdiv(b.mul(t, i64(units)), n_tasks)
    hi = b.sdiv(b.mul(b.add(t, i64(1)), i64(units)), n_tasks)
    b.call(body_fn, [*loaded, lo, hi, t])
    b.ret_void()
    b.position_at_end(here)

    fn_g, hctx_g, n_g = hook_globals(module)
    hook = b.load(fn_g, typ=PTR)
    # an indirect call: llvmlite takes the callee's signature from ``function_type``, which an opaque
    # ``ptr`` value cannot give, so the loaded pointer is given a class that states it
    hook.__class__ = _HookLoad
    threads = b.sext(b.load(n_g, typ=I32), I64)
    serial = b.or_(b.icmp_unsigned("==", hook, ir.Constant(PTR, None)), b.icmp_signed("<=", threads, i64(1)))
    n = b.mul(threads, i64(TASKS_PER_THREAD))
    n = b.select(b.icmp_signed("<", n, i64(cap)), n, i64(cap))
    n = b.select(serial, i64(1), n)
    # the block lives in the entry block, so a kernel may split inside its loops (one alloca per call)
    here = b.block
    b.position_at_start(b.function.entry_basic_block)
    block = b.alloca(I64, size=i64(len(pointers) + 1))
    block.align = 8
    b.position_at_end(here)
    em.store(n, block, 0, align=8)
    for i, p in enumerate(pointers):
        em.store(b.ptrtoint(p, I64), block, i + 1, align=8)
    with b.if_else(serial) as (then, otherwise):
        with then:
            # no hook: the body inline over all units with constant bounds, exactly the code a
            # kernel had before threading (the task function's bounds are only known at run time)
            if slots is None:
                body(em, pointers, i64(0), i64(units))
            else:
                body(em, pointers, i64(0), i64(units), i64(0))
        with otherwise:
            b.call(hook, [b.load(hctx_g, typ=PTR), task, block, n])


def emit_end_of_run(em: Emitter) -> None:
    """At the end of ``mcir_NAME_run``: ``fn(ctx, NULL, NULL, 0)`` when a hook is installed, the notice
    that this run will not call it again (a parallel-for of no tasks, which any conforming host runs as
    a no-op). mcir's pool lets its workers spin for the next parallel-for throughout a run and sleep
    soon after this notice. Emitted only in a library with a kernel that splits (one that never calls
    the hook does not announce anything)."""
    module = em.module
    if _HOOK_FN not in module.globals:
        return
    fn_g, hctx_g, _ = hook_globals(module)
    b = em.b
    hook = b.load(fn_g, typ=PTR)
    hook.__class__ = _HookLoad
    with b.if_then(b.icmp_unsigned("!=", hook, ir.Constant(PTR, None))):
        null = ir.Constant(PTR, None)
        b.call(hook, [b.load(hctx_g, typ=PTR), null, null, i64(0)])
