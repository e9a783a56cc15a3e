import Foundation
import Testing

@testable import Torch

typealias F = Functional

/// Replays the cases of scripts/parity/make_engine_fixtures.py: same inputs, same function, then output and
/// gradients (of sum(out · w)) compared with PyTorch's.
@Suite struct EngineParityTests {
    let fixture: Fixture

    init() throws { fixture = try Fixture("engine/ops.safetensors") }

    func replay(_ name: String, atol: Double = 1e-5, rtol: Double = 1e-4, _ body: ([Tensor]) -> [Tensor]) throws {
        var inputs: [Tensor] = []
        while fixture.has("\(name).in\(inputs.count)") { inputs.append(try fixture.tensor("\(name).in\(inputs.count)")) }
        #expect(!inputs.isEmpty, "no fixture for case \(name)")
        let differentiable = inputs.indices.filter { fixture.has("\(name).grad\($0)") }
        for i in differentiable { inputs[i].requiresGrad = true }
        let outputs = body(inputs)
        let out = outputs.count == 1 ? outputs[0] : Tensor.cat(outputs.map { $0.reshape([-1]).to(.float32) })
        let expected = try fixture.tensor("\(name).out")
        expectClose(out.detach().to(expected.dtype), expected, atol: atol, rtol: rtol, "\(name) output")
        guard fixture.has("\(name).w") else { return }
        let loss = (out * (try fixture.tensor("\(name).w"))).sum()
        let grads = Autograd.grad(outputs: [loss], inputs: differentiable.map { inputs[$0] }, allowUnused: true)
        for (k, i) in differentiable.enumerated() {
            let g = grads[k] ?? inputs[i].zerosLike()
            expectClose(g, try fixture.tensor("\(name).grad\(i)"), atol: atol, rtol: rtol, "\(name) gradient of input \(i)")
        }
    }

    @Test func arithmetic() throws {
        try replay("add") { [$0[0] + $0[1]] }
        try replay("sub") { [$0[0] - $0[1]] }
        try replay("mul") { [$0[0] * $0[1]] }
        try replay("div") { [$0[0] / ($0[1].abs() + 0.5)] }
        try replay("scalar_ops") { let a = $0[0]; return [a + 2.5, a - 1.25, a * 3, a / 4, 1.5 - a, 2 / (a.abs() + 1), 3 * a] }
        try replay("add_alpha") { [$0[0].add($0[1], alpha: -0.75)] }
        try replay("pow_scalar") { [($0[0].abs() + 0.1).pow(1.7)] }
        try replay("pow_tensor") { [($0[0].abs() + 0.1).pow($0[1])] }
        try replay("maximum_minimum") { [$0[0].maximum($0[1]), $0[0].minimum($0[1])] }
        try replay("unary") {
            let a = $0[0], p = a.abs() + 0.1
            return [a.neg(), a.abs(), a.exp(), p.log(), p.sqrt(), p.rsqrt(), a.sin(), a.cos(), a.tanh(), a.sigmoid(),
                    a.square(), a.erf(), a.softplus()]
        }
        try replay("activations") { let a = $0[0]; return [a.gelu(), a.gelu(approximate: true), a.quickGelu(), a.silu(), a.relu()] }
        try replay("clamp") { [$0[0].clamp(min: -0.5, max: 0.7)] }
        try replay("clamp_min") { [$0[0].clamp(min: 0.2)] }
        try replay("where") { [Tensor.where($0[0].gt(0), $0[0], $0[1] * 2)] }
        try replay("masked_fill") { [$0[0].maskedFill($0[0].lt(0), -3)] }
        try replay("lerp") { [$0[0].lerp($0[1], weight: 0.3)] }
        try replay("comparisons") {
            let (a, b) = ($0[0], $0[1])
            return [a.eq(b), a.ne(b), a.lt(b), a.le(b), a.gt(b), a.ge(b), a.gt(0)]
        }
    }

    @Test func reductions() throws {
        try replay("sum_all") { [$0[0].sum()] }
        try replay("sum_dim") { [$0[0].sum(dim: 1)] }
        try replay("mean_keepdim") { [$0[0].mean([0, 2], keepDim: true)] }
        try replay("var") { [$0[0].variance([1])] }
        try replay("std_biased") { [$0[0].std([0], correction: 0)] }
        try replay("var_all") { [$0[0].variance()] }
        try replay("amax") { [$0[0].amax([1])] }
        try replay("max_dim") { let m = $0[0].max(dim: 1); return [m.values, m.indices] }
        try replay("argmax") { [$0[0].argmax(dim: 1), $0[0].argmax()] }
        try replay("norm") { [$0[0].norm(p: 2, [-1])] }
        try replay("norm_all") { [$0[0].norm()] }
        try replay("logsumexp") { [$0[0].logsumexp([1])] }
        try replay("cumsum") { [$0[0].cumsum(dim: 1)] }
        try replay("prod") { [$0[0].prod([1])] }
    }

    @Test func viewsAndJoins() throws {
        try replay("reshape_permute") { [$0[0].permute([2, 0, 1]).reshape([4, 6])] }
        try replay("transpose_contiguous") { [$0[0].transpose(0, 2).contiguous()] }
        try replay("expand") { [$0[0].expand([3, 4, 5])] }
        try replay("squeeze_unsqueeze") { [$0[0].squeeze(1).unsqueeze(0)] }
        try replay("slice_step") { [$0[0].slice(dim: 1, start: 1, end: 7, step: 2)] }
        try replay("narrow_select") { [$0[0].narrow(dim: 1, start: 2, length: 3), $0[0][1]] }
        try replay("index_select") { [$0[0].indexSelect(dim: 1, index: $0[1])] }
        try replay("gather") { [$0[0].gather(dim: 1, index: $0[1])] }
        try replay("cat_stack") { [Tensor.cat([$0[0], $0[1]], dim: 1), Tensor.stack([$0[0], $0[1]], dim: 0)] }
        try replay("chunk_split") { $0[0].chunk(3, dim: 1) + $0[0].split(sizes: [1, 4], dim: 1) }
        try replay("repeat") { [$0[0].repeat([2, 3]), $0[0].repeatInterleave(2, dim: 0)] }
        try replay("tril_triu") { [$0[0].tril(), $0[0].triu(1)] }
        try replay("flatten") { [$0[0].flatten(from: 1)] }
    }

    @Test func linearAlgebra() throws {
        try replay("matmul") { [$0[0].matmul($0[1])] }
        try replay("bmm") { [$0[0].bmm($0[1])] }
        try replay("baddbmm") { [$0[0].baddbmm($0[1], $0[2], beta: 0.5, alpha: 2)] }
        try replay("linear") { [F.linear($0[0], weight: $0[1], bias: $0[2])] }
        try replay("linear_nobias") { [F.linear($0[0], weight: $0[1])] }
    }

    @Test func neuralNetworkFunctions() throws {
        try replay("conv2d") { [F.conv2d($0[0], weight: $0[1], bias: $0[2], stride: (2, 2), padding: (1, 1))] }
        try replay("conv2d_groups") { [F.conv2d($0[0], weight: $0[1], bias: $0[2], padding: (1, 1), groups: 2)] }
        try replay("conv2d_1x1_dilation") { [F.conv2d($0[0], weight: $0[1], padding: (2, 2), dilation: (2, 2))] }
        try replay("group_norm") { [F.groupNorm($0[0], groups: 3, weight: $0[1], bias: $0[2], eps: 1e-5)] }
        try replay("layer_norm") { [F.layerNorm($0[0], normalizedShape: [8], weight: $0[1], bias: $0[2])] }
        try replay("layer_norm_noaffine") { [F.layerNorm($0[0], normalizedShape: [3, 8], eps: 1e-6)] }
        try replay("softmax") { [F.softmax($0[0], dim: -1)] }
        try replay("log_softmax") { [F.logSoftmax($0[0], dim: 0)] }
        try replay("sdpa") { [F.scaledDotProductAttention(query: $0[0], key: $0[1], value: $0[2])] }
        try replay("sdpa_bool_mask") { [F.scaledDotProductAttention(query: $0[0], key: $0[1], value: $0[2], mask: $0[3])] }
        try replay("sdpa_float_mask") { [F.scaledDotProductAttention(query: $0[0], key: $0[1], value: $0[2], mask: $0[3])] }
        try replay("sdpa_causal_scale") {
            [F.scaledDotProductAttention(query: $0[0], key: $0[1], value: $0[2], isCausal: true, scale: 0.3)]
        }
        try replay("embedding") { [F.embedding($0[1], weight: $0[0])] }
        try replay("interp_nearest_scale") { [F.interpolate($0[0], scaleFactor: (2, 2), mode: .nearest)] }
        try replay("interp_bilinear") { [F.interpolate($0[0], size: (5, 7), mode: .bilinear)] }
        try replay("interp_bilinear_aa") { [F.interpolate($0[0], size: (3, 3), mode: .bilinear, antialias: true)] }
        try replay("interp_bicubic_align") { [F.interpolate($0[0], size: (7, 6), mode: .bicubic, alignCorners: true)] }
        try replay("interp_bicubic_aa") { [F.interpolate($0[0], size: (4, 4), mode: .bicubic, antialias: true)] }
        try replay("adaptive_avg_pool2d") { [F.adaptiveAvgPool2d($0[0], outputSize: (4, 3))] }
        try replay("avg_pool2d") { [F.avgPool2d($0[0], kernelSize: (2, 2))] }
        try replay("pad_constant") { [F.pad($0[0], [1, 2, 0, 1], value: 0.5)] }
        try replay("pad_reflect") { [F.pad($0[0], [1, 1, 2, 2], mode: .reflect)] }
        try replay("pad_replicate") { [F.pad($0[0], [2, 0, 1, 1], mode: .replicate)] }
        try replay("cosine_similarity") { [F.cosineSimilarity($0[0], $0[1], dim: 1)] }
        try replay("normalize") { [F.normalize($0[0], dim: -1)] }
        try replay("mse_loss") { [F.mseLoss($0[0], $0[1])] }
    }

    /// Rounding to half and bfloat16 must be bit-exact, so the tolerance is zero.
    @Test func dtypeConversions() throws {
        try replay("to_half_bf16", atol: 0, rtol: 0) { [$0[0].to(.float16).to(.float32), $0[0].to(.bfloat16).to(.float32)] }
    }
}
