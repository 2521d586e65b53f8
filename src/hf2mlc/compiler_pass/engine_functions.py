"""The functions MLC LLM's engine requires from a model library besides the model itself.

MLC's engine (cpp/serve) looks these up by name when it loads a library, and refuses to start
without some of them:

* every target: ``apply_logit_bias_inplace``, ``apply_penalty_inplace``, ``apply_bitmask_inplace``
  (the logit processor checks all three at construction) and ``alloc_embedding_tensor`` (used when
  present: the engine's embedding buffer of ``prefill_chunk_size`` rows);
* Metal (and CUDA/Vulkan), where sampling runs on the GPU: ``multinomial_from_uniform``,
  ``argsort_probs``, ``sample_with_top_p``, ``sampler_take_probs`` (checked at construction) and
  ``renormalize_by_top_p`` (called whenever top_p < 1, as in LINE's recommended settings).

* speculative decoding: ``gather_probs`` and ``scatter_probs`` (rows of probabilities moved between
  the engine's per-draft-token buffer and its per-sequence one, looked up at engine start), and on
  GPU targets ``sampler_verify_draft_tokens`` (accepts or rejects a token tree of drafts on the device;
  without it the engine verifies on the CPU after copying every row back).

They are attached for every target here (hf2mlc's host builds too), which lets the tests run each one
on the CPU against numpy.

The argument layouts are the engine's (function_table.cc, logit_processor.cc, gpu_sampler.cc):
logits/probabilities ``[batch, vocab]`` float32, token/row indices int32.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx
from tvm.relax.frontend import nn
from tvm.script import tirx as T

#: The engine's names, in the order they are attached.
ENGINE_FUNCTIONS = (
    "alloc_embedding_tensor",
    "apply_logit_bias_inplace",
    "apply_penalty_inplace",
    "apply_bitmask_inplace",
    "multinomial_from_uniform",
    "argsort_probs",
    "sample_with_top_p",
    "sampler_take_probs",
    "renormalize_by_top_p",
    "gather_probs",
    "scatter_probs",
    "sampler_verify_draft_tokens",
)


# --- in-place logit processing (TensorIR, one thread per element on GPUs) ---------------------


def _logit_kernels(gpu: bool, threads: int) -> dict[str, tirx.PrimFunc]:
    """The three in-place kernels, each over a flat element index ``p = p0 * threads + p1``.

    On a GPU ``p0``/``p1`` are the block and thread indices; on the CPU two plain loops.  (Binding
    the loops by schedule is refused for in-place updates, so the loop kind is chosen here.)
    """
    tx = threads

    def loop(extent, tag):
        return T.thread_binding(extent, thread=tag) if gpu else T.serial(extent)

    @T.prim_func(s_tir=True)
    def apply_logit_bias_inplace(var_logits: T.handle, var_pos2seq_id: T.handle, var_token_ids: T.handle, var_bias: T.handle):
        """logits[row of token i, token_ids[i]] += bias[i]."""
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        batch_size, vocab_size, num_token = T.int32(), T.int32(), T.int32()
        logits = T.match_buffer(var_logits, (batch_size, vocab_size), "float32")
        pos2seq_id = T.match_buffer(var_pos2seq_id, (num_token,), "int32")
        token_ids = T.match_buffer(var_token_ids, (num_token,), "int32")
        bias = T.match_buffer(var_bias, (num_token,), "float32")
        for p0 in loop((num_token + tx - 1) // tx, "blockIdx.x"):
            for p1 in loop(tx, "threadIdx.x"):
                with T.sblock("block"):
                    v = T.axis.spatial(num_token, p0 * tx + p1)
                    T.where(p0 * tx + p1 < num_token)
                    logits[pos2seq_id[v], token_ids[v]] = logits[pos2seq_id[v], token_ids[v]] + bias[v]

    @T.prim_func(s_tir=True)
    def apply_penalty_inplace(
        var_logits: T.handle,
        var_seq_ids: T.handle,
        var_pos2seq_id: T.handle,
        var_token_ids: T.handle,
        var_token_cnt: T.handle,
        var_penalties: T.handle,
    ):
        """Presence and frequency penalties subtracted, then the repetition penalty (divide a
        positive logit, multiply a negative one); penalties[s] = (presence, frequency, repetition)."""
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        batch_size, vocab_size, num_token, num_seq = T.int32(), T.int32(), T.int32(), T.int32()
        logits = T.match_buffer(var_logits, (batch_size, vocab_size), "float32")
        seq_ids = T.match_buffer(var_seq_ids, (num_seq,), "int32")
        pos2seq_id = T.match_buffer(var_pos2seq_id, (num_token,), "int32")
        token_ids = T.match_buffer(var_token_ids, (num_token,), "int32")
        token_cnt = T.match_buffer(var_token_cnt, (num_token,), "int32")
        penalties = T.match_buffer(var_penalties, (num_seq, 3), "float32")
        for p0 in loop((num_token + tx - 1) // tx, "blockIdx.x"):
            for p1 in loop(tx, "threadIdx.x"):
                with T.sblock("block"):
                    v = T.axis.spatial(num_token, p0 * tx + p1)
                    T.where(p0 * tx + p1 < num_token)
                    logits[seq_ids[pos2seq_id[v]], token_ids[v]] = logits[seq_ids[pos2seq_id[v]], token_ids[v]] - (
                        penalties[pos2seq_id[v], 0] + T.Cast("float32", token_cnt[v]) * penalties[pos2seq_id[v], 1]
                    )
                    logits[seq_ids[pos2seq_id[v]], token_ids[v]] = T.if_then_else(
                        logits[seq_ids[pos2seq_id[v]], token_ids[v]] < T.float32(0),
                        logits[seq_ids[pos2seq_id[v]], token_ids[v]] * penalties[pos2seq_id[v], 2],
                        logits[seq_ids[pos2seq_id[v]], token_ids[v]] / penalties[pos2seq_id[v], 2],
                    )

    @T.prim_func(s_tir=True)
    def apply_bitmask_inplace(var_logits: T.handle, var_seq_ids: T.handle, var_bitmask: T.handle):
        """Tokens whose bit is 0 in their row's mask get the lowest float32 (constrained output)."""
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        batch_size, vocab_size, num_seq = T.int32(), T.int32(), T.int32()
        logits = T.match_buffer(var_logits, (batch_size, vocab_size), "float32")
        seq_ids = T.match_buffer(var_seq_ids, (num_seq,), "int32")
        bitmask = T.match_buffer(var_bitmask, (batch_size, (vocab_size + 31) // 32), "int32")
        for p0 in loop((num_seq * vocab_size + tx - 1) // tx, "blockIdx.x"):
            for p1 in loop(tx, "threadIdx.x"):
                with T.sblock("block"):
                    vs = T.axis.spatial(num_seq, (p0 * tx + p1) // vocab_size)
                    vt = T.axis.spatial(vocab_size, (p0 * tx + p1) % vocab_size)
                    T.where(p0 * tx + p1 < num_seq * vocab_size)
                    logits[seq_ids[vs], vt] = T.if_then_else(
                        (bitmask[seq_ids[vs], vt // 32] >> (vt % 32)) & 1 == 1,
                        logits[seq_ids[vs], vt],
                        T.min_value("float32"),
                    )

    return {
        "apply_logit_bias_inplace": apply_logit_bias_inplace,
        "apply_penalty_inplace": apply_penalty_inplace,
        "apply_bitmask_inplace": apply_bitmask_inplace,
    }


# --- speculative decoding (TensorIR) -------------------------------------------------------------


def _row_copy_kernels(gpu: bool, threads: int) -> dict[str, tirx.PrimFunc]:
    """``gather_probs``: ``dst[i] = src[indices[i]]``; ``scatter_probs``: ``dst[indices[i]] = src[i]``.

    Both write into the engine's own ``dst`` buffer (its argument order is src, indices, dst), one
    element per thread on a GPU.  (``gather`` is a Python constant: TVMScript resolves it while parsing.)
    """
    tx = threads

    def loop(extent, tag):
        return T.thread_binding(extent, thread=tag) if gpu else T.serial(extent)

    def copy_rows(gather: bool) -> tirx.PrimFunc:
        @T.prim_func(s_tir=True)
        def kernel(var_src: T.handle, var_indices: T.handle, var_dst: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            batch_size, rows, vocab_size = T.int32(), T.int32(), T.int32()
            src = T.match_buffer(var_src, (rows if gather else batch_size, vocab_size), "float32")
            indices = T.match_buffer(var_indices, (batch_size,), "int32")
            dst = T.match_buffer(var_dst, (batch_size if gather else rows, vocab_size), "float32")
            for p0 in loop((batch_size * vocab_size + tx - 1) // tx, "blockIdx.x"):
                for p1 in loop(tx, "threadIdx.x"):
                    with T.sblock("copy_rows"):
                        vb = T.axis.spatial(batch_size, (p0 * tx + p1) // vocab_size)
                        vj = T.axis.spatial(vocab_size, (p0 * tx + p1) % vocab_size)
                        T.where(p0 * tx + p1 < batch_size * vocab_size)
                        if gather:
                            dst[vb, vj] = src[indices[vb], vj]
                        else:
                            dst[indices[vb], vj] = src[vb, vj]

        return kernel

    return {"gather_probs": copy_rows(True), "scatter_probs": copy_rows(False)}


def _verify_kernel(gpu: bool) -> tirx.PrimFunc:
    """Speculative sampling's acceptance test over each sequence's token tree, in place.

    A node's draft token t is accepted when ``model[parent, t] >= u * draft[node, t]`` (u its uniform
    draw: the test ``u < p/q`` without dividing by a zero q); walking on to its first child.  A
    rejected node turns its parent's row into ``max(model - draft, 0)`` renormalized (the residual
    distribution a replacement token is drawn from), and its next sibling is tried against it.  When
    that residual has no mass (< 1e-7) the draft is accepted as it was.  ``parent_ptr[b]`` starts at
    the tree's root and ends at the last accepted node: the engine samples the next token from
    ``model[parent_ptr[b]]``.

    One sequence per GPU thread block: the walk is sequential by nature, and a batch of drafts is
    short; the engine calls this only while speculating.
    """

    def loop(extent, tag):
        return T.thread_binding(extent, thread=tag) if gpu else T.serial(extent)

    @T.prim_func(s_tir=True)
    def verify(
        var_draft_probs: T.handle,
        var_draft_tokens: T.handle,
        var_model_probs: T.handle,
        var_first_child: T.handle,
        var_next_sibling: T.handle,
        var_uniform_samples: T.handle,
        var_parent_ptr: T.handle,
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        num_nodes, nbatch, vocab_size = T.int32(), T.int32(), T.int32()
        draft_probs = T.match_buffer(var_draft_probs, (num_nodes, vocab_size), "float32")
        draft_tokens = T.match_buffer(var_draft_tokens, (num_nodes,), "int32")
        model_probs = T.match_buffer(var_model_probs, (num_nodes, vocab_size), "float32")
        first_child = T.match_buffer(var_first_child, (num_nodes,), "int32")
        next_sibling = T.match_buffer(var_next_sibling, (num_nodes,), "int32")
        uniform_samples = T.match_buffer(var_uniform_samples, (num_nodes,), "float32")
        parent_ptr = T.match_buffer(var_parent_ptr, (nbatch,), "int32")
        for b in loop(nbatch, "blockIdx.x"):
            for _t in loop(1, "threadIdx.x"):
                with T.sblock("verify"):
                    vb = T.axis.spatial(nbatch, b)
                    parent = T.sblock_alloc_buffer((1,), "int32", scope="local")
                    child = T.sblock_alloc_buffer((1,), "int32", scope="local")
                    mass = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    parent[0] = parent_ptr[vb]
                    child[0] = first_child[parent[0]]
                    while child[0] != -1:
                        if model_probs[parent[0], draft_tokens[child[0]]] >= (
                            uniform_samples[child[0]] * draft_probs[child[0], draft_tokens[child[0]]]
                        ):
                            parent[0] = child[0]
                            child[0] = first_child[child[0]]
                        else:
                            mass[0] = T.float32(0)
                            for k in T.serial(vocab_size):
                                mass[0] = mass[0] + T.max(model_probs[parent[0], k] - draft_probs[child[0], k], T.float32(0))
                            if mass[0] < T.float32(1e-7):
                                parent[0] = child[0]
                                child[0] = first_child[child[0]]
                            else:
                                for k in T.serial(vocab_size):
                                    model_probs[parent[0], k] = (
                                        T.max(model_probs[parent[0], k] - draft_probs[child[0], k], T.float32(0)) / mass[0]
                                    )
                                child[0] = next_sibling[child[0]]
                    parent_ptr[vb] = parent[0]

    return verify


def _attach_verify_draft_tokens(bb: relax.BlockBuilder, gpu: bool) -> None:
    """The engine's entry point: updates model_probs and parent_ptr in place and returns both."""
    nodes, batch, vocab = tirx.Var("num_nodes", "int64"), tirx.Var("nbatch", "int64"), tirx.Var("vocab_size", "int64")
    args = [
        relax.Var("draft_probs", relax.TensorType((nodes, vocab), "float32")),
        relax.Var("draft_tokens", relax.TensorType((nodes,), "int32")),
        relax.Var("model_probs", relax.TensorType((nodes, vocab), "float32")),
        relax.Var("token_tree_first_child", relax.TensorType((nodes,), "int32")),
        relax.Var("token_tree_next_sibling", relax.TensorType((nodes,), "int32")),
        relax.Var("uniform_samples", relax.TensorType((nodes,), "float32")),
        relax.Var("token_tree_parent_ptr", relax.TensorType((batch,), "int32")),
    ]
    kernel = bb.add_func(_verify_kernel(gpu), "batch_verify_draft_tokens")
    with bb.function("sampler_verify_draft_tokens", args):
        with bb.dataflow():
            out = bb.emit_output(
                relax.call_tir_inplace(
                    kernel, args, inplace_indices=[2, 6], out_ty=[args[2].ty, args[6].ty]
                )
            )
        bb.emit_func_output(out)


# --- sampling (Relax, lowered like the model's own operators) ----------------------------------


def _reshape(bb: relax.BlockBuilder, value: relax.Expr, shape: list, dtype: str) -> relax.Expr:
    """A view with another shape (the engine passes flat vectors where TVM's ops want columns)."""
    new_shape = relax.ShapeExpr(shape)
    return bb.emit(relax.call_pure_packed("vm.builtin.reshape", value, new_shape, ty_args=relax.TensorType(new_shape, dtype)))


def _sort_descending(bb: relax.BlockBuilder, probs: relax.Expr, batch, vocab) -> tuple[relax.Expr, relax.Expr]:
    indices = bb.emit(relax.op.argsort(probs, axis=-1, descending=True, dtype="int32"))
    values = bb.emit_te(
        lambda p, idx: te.compute((batch, vocab), lambda i, j: p[i, idx[i, j]], name="take_sorted"),
        probs,
        indices,
        primfunc_name_hint="take_sorted_probs",
    )
    return values, indices


def _full_vocab_top_k(bb: relax.BlockBuilder, probs: relax.Expr) -> relax.Expr:
    """top_k = vocab for every row of ``probs``: the engine applies no top-k (LINE's card: top_k 0)."""
    return bb.emit_te(
        lambda p: te.compute((p.shape[0], 1), lambda i, j: p.shape[1].astype("int32"), name="full_top_k"),
        probs,
        primfunc_name_hint="full_top_k",
    )


def _attach_multinomial(bb: relax.BlockBuilder) -> None:
    """token = inverse CDF of probs[sample_indices[j]] at uniform_samples[j]."""
    batch, samples, vocab = tirx.Var("batch_size", "int64"), tirx.Var("num_samples", "int64"), tirx.Var("vocab_size", "int64")
    probs = relax.Var("probs", relax.TensorType((batch, vocab), "float32"))
    uniform = relax.Var("uniform_samples", relax.TensorType((samples,), "float32"))
    rows = relax.Var("sample_indices", relax.TensorType((samples,), "int32"))
    with bb.function("multinomial_from_uniform", [probs, uniform, rows]):
        with bb.dataflow():
            tokens = bb.emit(
                relax.op.multinomial_from_uniform(
                    probs, _reshape(bb, uniform, [samples, 1], "float32"), _reshape(bb, rows, [samples, 1], "int32"), "int32"
                )
            )
            out = bb.emit_output(_reshape(bb, tokens, [samples], "int32"))
        bb.emit_func_output(out)


def _attach_argsort(bb: relax.BlockBuilder) -> None:
    """(probabilities sorted descending, their token ids) per row."""
    batch, vocab = tirx.Var("batch_size", "int64"), tirx.Var("vocab_size", "int64")
    probs = relax.Var("probs", relax.TensorType((batch, vocab), "float32"))
    with bb.function("argsort_probs", [probs]):
        with bb.dataflow():
            values, indices = _sort_descending(bb, probs, batch, vocab)
            out = bb.emit_output(relax.Tuple([values, indices]))
        bb.emit_func_output(out)


def _attach_sample_with_top_p(bb: relax.BlockBuilder) -> None:
    """Nucleus sampling from already sorted rows (TVM's sample_top_p_top_k_from_sorted_prob)."""
    batch, samples, vocab = tirx.Var("batch_size", "int64"), tirx.Var("num_samples", "int64"), tirx.Var("vocab_size", "int64")
    sorted_probs = relax.Var("sorted_probs", relax.TensorType((batch, vocab), "float32"))
    sorted_indices = relax.Var("sorted_indices", relax.TensorType((batch, vocab), "int32"))
    uniform = relax.Var("uniform_samples", relax.TensorType((samples,), "float32"))
    rows = relax.Var("sample_indices", relax.TensorType((samples,), "int32"))
    top_p = relax.Var("top_p", relax.TensorType((batch,), "float32"))
    with bb.function("sample_with_top_p", [sorted_probs, sorted_indices, uniform, rows, top_p]):
        with bb.dataflow():
            tokens = nn.op.sample_top_p_top_k_from_sorted_prob(
                nn.Tensor(_expr=sorted_probs),
                nn.Tensor(_expr=sorted_indices),
                nn.Tensor(_expr=_reshape(bb, top_p, [batch, 1], "float32")),
                nn.Tensor(_expr=_full_vocab_top_k(bb, sorted_probs)),
                nn.Tensor(_expr=_reshape(bb, uniform, [samples, 1], "float32")),
                nn.Tensor(_expr=_reshape(bb, rows, [samples, 1], "int32")),
            )
            out = bb.emit_output(_reshape(bb, tokens._expr, [samples], "int32"))
        bb.emit_func_output(out)


def _attach_take_probs(bb: relax.BlockBuilder) -> None:
    """Probabilities of the sampled tokens, and of the top candidates the engine reports (logprobs):
    ``top_prob_offsets`` are flat positions ``row * vocab + rank`` into the sorted order."""
    batch, samples, positions, vocab = (
        tirx.Var("batch_size", "int64"),
        tirx.Var("num_samples", "int64"),
        tirx.Var("num_positions", "int64"),
        tirx.Var("vocab_size", "int64"),
    )
    probs = relax.Var("unsorted_probs", relax.TensorType((batch, vocab), "float32"))
    sorted_indices = relax.Var("sorted_indices", relax.TensorType((batch, vocab), "int32"))
    rows = relax.Var("sample_indices", relax.TensorType((samples,), "int32"))
    tokens = relax.Var("sampling_result", relax.TensorType((samples,), "int32"))
    offsets = relax.Var("top_prob_offsets", relax.TensorType((positions,), "int32"))

    def take(p, idx, r, tok, off):
        v = p.shape[1]
        sampled = te.compute((samples,), lambda j: p[r[j], tok[j]], name="sampled_values")
        top_index = te.compute(
            (positions,), lambda i: idx[off[i].astype("int64") // v, off[i].astype("int64") % v], name="top_prob_indices"
        )
        top_prob = te.compute(
            (positions,),
            lambda i: p[off[i].astype("int64") // v, idx[off[i].astype("int64") // v, off[i].astype("int64") % v]],
            name="top_prob_probs",
        )
        return [sampled, top_prob, top_index]

    with bb.function("sampler_take_probs", [probs, sorted_indices, rows, tokens, offsets]):
        with bb.dataflow():
            out = bb.emit_output(
                bb.emit_te(take, probs, sorted_indices, rows, tokens, offsets, primfunc_name_hint="sampler_take_probs")
            )
        bb.emit_func_output(out)


def _nucleus_renormalize(probs: te.Tensor, sorted_probs: te.Tensor, cumsum: te.Tensor, top_p: te.Tensor) -> te.Tensor:
    """Keep the tokens at least as likely as the least likely member of the nucleus, rescaled.

    Token of rank j is in the nucleus when the mass of the tokens ranked before it is < top_p: the
    smallest set of most likely tokens whose mass reaches top_p (rank 0 always).
    """
    b, v = probs.shape
    r = te.reduce_axis((0, v), name="r")
    cutoff = te.compute(
        (b,),
        lambda i: te.min(
            tirx.if_then_else(cumsum[i, r] - sorted_probs[i, r] < top_p[i], sorted_probs[i, r], tirx.max_value("float32")),
            axis=r,
        ),
        name="cutoff",
    )
    r2 = te.reduce_axis((0, v), name="r2")
    mass = te.compute(
        (b,),
        lambda i: te.sum(tirx.if_then_else(probs[i, r2] >= cutoff[i], probs[i, r2], tirx.const(0, "float32")), axis=r2),
        name="mass",
    )
    return te.compute(
        (b, v),
        lambda i, j: tirx.if_then_else(probs[i, j] >= cutoff[i], probs[i, j] / mass[i], tirx.const(0, "float32")),
        name="renormalized",
    )


def _attach_renormalize_by_top_p(bb: relax.BlockBuilder) -> None:
    """Probabilities restricted to each row's nucleus and rescaled to sum to 1.

    ``init_pivots`` (MLC's starting points for an iterative cutoff search) is accepted and not
    needed: the cutoff is read off the sorted row.  (TVM 0.27's own renormalize_top_p_top_k_prob
    does not compile for LLVM: it compares a boolean with 0.)
    """
    batch, vocab = tirx.Var("batch_size", "int64"), tirx.Var("vocab_size", "int64")
    probs = relax.Var("probs", relax.TensorType((batch, vocab), "float32"))
    top_p = relax.Var("top_p", relax.TensorType((batch,), "float32"))
    pivots = relax.Var("init_pivots", relax.TensorType((batch, 3), "float32"))
    with bb.function("renormalize_by_top_p", [probs, top_p, pivots]):
        with bb.dataflow():
            sorted_values, _ = _sort_descending(bb, probs, batch, vocab)
            cumsum = bb.emit(relax.op.cumsum(sorted_values, axis=1))
            out = bb.emit_output(
                bb.emit_te(_nucleus_renormalize, probs, sorted_values, cumsum, top_p, primfunc_name_hint="renormalize_by_top_p")
            )
        bb.emit_func_output(out)


def _attach_alloc_embedding(bb: relax.BlockBuilder, rows: int, hidden: int, dtype: str) -> None:
    with bb.function("alloc_embedding_tensor", []):
        out = bb.emit(
            relax.op.builtin.alloc_tensor(relax.ShapeExpr([rows, hidden]), dtype, runtime_device_index=0)
        )
        bb.emit_func_output(out)


@tvm.transform.module_pass(opt_level=0, name="AttachEngineFunctions")
class AttachEngineFunctions:
    """Adds :data:`ENGINE_FUNCTIONS` to the model module (run before legalization)."""

    def __init__(self, target: tvm.target.Target, *, prefill_chunk_size: int, hidden_size: int, dtype: str) -> None:
        self.target = target
        self.prefill_chunk_size = prefill_chunk_size
        self.hidden_size = hidden_size
        self.dtype = dtype

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        bb = relax.BlockBuilder(mod)
        _attach_alloc_embedding(bb, self.prefill_chunk_size, self.hidden_size, self.dtype)
        _attach_multinomial(bb)
        _attach_argsort(bb)
        _attach_sample_with_top_p(bb)
        _attach_take_probs(bb)
        _attach_renormalize_by_top_p(bb)
        gpu = self.target.kind.name != "llvm"
        _attach_verify_draft_tokens(bb, gpu)
        mod = bb.finalize()
        threads = int(self.target.attrs.get("max_num_threads", 256)) if gpu else 256
        for name, func in {**_logit_kernels(gpu, threads), **_row_copy_kernels(gpu, threads)}.items():
            mod[name] = func.with_attr("global_symbol", name)
        return mod
