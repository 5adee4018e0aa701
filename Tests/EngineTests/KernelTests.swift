import Foundation
import Testing
@testable import Engine
import CSwitchyardKernels

/// Quantized kernels against plain float references on synthetic data.
@Suite(.serialized) struct KernelTests {
    /// Random weights quantized to GGUF `type`, as raw GGUF rows.
    static func quantized(_ type: GGMLType, rows: Int, k: Int, rng: inout TestRNG) -> (bytes: [UInt8], floats: [Float]) {
        let f = (0..<(rows * k)).map { _ in rng.float() * 0.5 }
        var bytes: [UInt8] = []
        switch type {
        case .q8_0, .q4_1:
            let rb = type.rowBytes(k)!
            bytes = [UInt8](repeating: 0, count: rows * rb)
            bytes.withUnsafeMutableBytes { b in
                for r in 0..<rows {
                    f.withUnsafeBufferPointer { fp in
                        if type == .q8_0 { syk_quantize_row_q8_0_ref(fp.baseAddress! + r * k, b.baseAddress! + r * rb, Int32(k)) }
                        else { syk_quantize_row_q4_1_ref(fp.baseAddress! + r * k, b.baseAddress! + r * rb, Int32(k)) }
                    }
                }
            }
        default: break
        }
        // The dequantized values are the exact weights the kernel multiplies.
        var deq = [Float](repeating: 0, count: rows * k)
        bytes.withUnsafeBytes { b in
            deq.withUnsafeMutableBufferPointer { d in
                let rb = type.rowBytes(k)!
                for r in 0..<rows {
                    if type == .q8_0 { syk_dequant_q8_0(b.baseAddress! + r * rb, d.baseAddress! + r * k, Int32(k)) }
                    else { syk_dequant_q4_1(b.baseAddress! + r * rb, d.baseAddress! + r * k, Int32(k)) }
                }
            }
        }
        return (bytes, deq)
    }

    @discardableResult
    func runGemm(_ type: GGMLType, isa: Int32, order: Int32 = Int32(SYK_SUM_LLAMA)) throws -> [Float] {
        var rng = TestRNG(seed: 42)
        let rows = 48, k = 96, ntok = 11
        let (bytes, w) = Self.quantized(type, rows: rows, k: k, rng: &rng)
        let chunk = type == .q8_0 ? Int(SYK_R16_Q8_0_CHUNK) : Int(SYK_R16_Q4_1_CHUNK)
        var packed = [UInt8](repeating: 0, count: rows / 16 * k / 32 * chunk)
        bytes.withUnsafeBytes { s in packed.withUnsafeMutableBytes { d in
            if type == .q8_0 { syk_repack_q8_0(s.baseAddress!, d.baseAddress!, Int32(rows), Int32(k)) }
            else { syk_repack_q4_1(s.baseAddress!, d.baseAddress!, Int32(rows), Int32(k)) }
        } }
        let x = (0..<(ntok * k)).map { _ in rng.float() }
        var qs = [Int8](repeating: 0, count: ntok * k)
        var d = [Float](repeating: 0, count: ntok * k / 32), s = d
        var isum = [Int32](repeating: 0, count: ntok * k / 32)
        var bias4 = [Int32](repeating: 0, count: ntok * k / 4)
        var out = [Float](repeating: 1, count: ntok * rows)
        let prev = syk_get_isa(), prevOrder = syk_get_sum_order()
        syk_set_isa(isa); syk_set_sum_order(order)
        defer { syk_set_isa(prev); syk_set_sum_order(prevOrder) }
        qs.withUnsafeMutableBufferPointer { qp in d.withUnsafeMutableBufferPointer { dp in s.withUnsafeMutableBufferPointer { sp in
        isum.withUnsafeMutableBufferPointer { ip in bias4.withUnsafeMutableBufferPointer { bp in
            var act = syk_act(qs: qp.baseAddress, d: dp.baseAddress, s: sp.baseAddress, isum: ip.baseAddress, bias4: bp.baseAddress,
                              K: Int32(k))
            x.withUnsafeBufferPointer { xp in for t in 0..<ntok { syk_quantize_act(xp.baseAddress! + t * k, nil, 0, &act, Int32(t), nil) } }
            packed.withUnsafeBytes { pb in
                var wm = syk_wmat(data: pb.baseAddress!.assumingMemoryBound(to: UInt8.self), type: Int32(type == .q8_0 ? SYK_W_R16_Q8_0 : SYK_W_R16_Q4_1), rows: Int32(rows), K: Int32(k))
                out.withUnsafeMutableBufferPointer { op in
                    // accumulate = 1 onto 1.0 checks the accumulate path too
                    syk_gemm(&wm, &act, Int32(ntok), op.baseAddress, Int32(rows), 1, 0, Int32(rows / 16))
                }
            }
        } } } } }
        // Reference: float weights (dequantized) times float activations. 8-bit activations bound the error
        // by ~|w|·|x|·k/254 per output; we check a relative bound well inside that.
        var maxErr: Float = 0, maxRef: Float = 0
        for t in 0..<ntok {
            for r in 0..<rows {
                var ref: Float = 1
                for i in 0..<k { ref += w[r * k + i] * x[t * k + i] }
                maxErr = max(maxErr, abs(out[t * rows + r] - ref))
                maxRef = max(maxRef, abs(ref - 1))
            }
        }
        #expect(maxErr < 0.02 * maxRef + 1e-3, "\(type) isa \(isa): max error \(maxErr) (max |ref| \(maxRef))")
        // Quantized-exact reference: the same integer math, computed here.
        for t in 0..<ntok {
            for r in 0..<rows {
                var exact: Float = 1
                for b in 0..<(k / 32) {
                    var sumi: Int32 = 0
                    for i in 0..<32 {
                        let wq: Int32
                        let raw = bytes[(r * type.rowBytes(k)! + b * type.blockBytes)...]
                        if type == .q8_0 { wq = Int32(Int8(bitPattern: raw[raw.startIndex + 2 + i])) }
                        else { let byte = raw[raw.startIndex + 4 + (i % 16)]; wq = Int32(i < 16 ? byte & 0xf : byte >> 4) }
                        sumi += wq * Int32(qs[t * k + b * 32 + i])
                    }
                    let raw = bytes[(r * type.rowBytes(k)! + b * type.blockBytes)...]
                    let dw = syk_fp16_to_fp32(UInt16(raw[raw.startIndex]) | UInt16(raw[raw.startIndex + 1]) << 8)
                    exact += Float(sumi) * dw * d[t * k / 32 + b]
                    if type == .q4_1 {
                        let mw = syk_fp16_to_fp32(UInt16(raw[raw.startIndex + 2]) | UInt16(raw[raw.startIndex + 3]) << 8)
                        exact += mw * s[t * k / 32 + b]
                    }
                }
                #expect(abs(out[t * rows + r] - exact) <= 1e-4 * max(1, abs(exact)), "\(type) isa \(isa) t\(t) r\(r)")
                if order == Int32(SYK_SUM_LLAMA) {
                    #expect(out[t * rows + r] == 1 + Self.llamaOrderDot(type, bytes: bytes, row: r, k: k, qs: qs, t: t, d: d, s: s),
                            "\(type) isa \(isa) t\(t) r\(r): not in llama.cpp's summation order")
                }
            }
        }
        return out
    }

    /// One output in llama.cpp's x86 order (ggml_vec_dot_q4_1_q8_1 / _q8_0_q8_0): 8 float lanes, lane L
    /// accumulating fma(d_w·d_a, Σ of elements 4L..4L+3, lane) over blocks; lanes summed
    /// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)); for Q4_1 plus the separate chain Σ fma(m_w, s_a, ·).
    static func llamaOrderDot(_ type: GGMLType, bytes: [UInt8], row r: Int, k: Int, qs: [Int8], t: Int, d: [Float], s: [Float]) -> Float {
        var lane = [Float](repeating: 0, count: 8)
        var msum: Float = 0
        let rb = type.rowBytes(k)!
        for b in 0..<(k / 32) {
            let base = r * rb + b * type.blockBytes
            let dw = syk_fp16_to_fp32(UInt16(bytes[base]) | UInt16(bytes[base + 1]) << 8)
            let dd = dw * d[t * k / 32 + b]
            for l in 0..<8 {
                var sumi: Int32 = 0
                for i in 0..<4 {
                    let e = 4 * l + i
                    let wq: Int32 = type == .q8_0 ? Int32(Int8(bitPattern: bytes[base + 2 + e]))
                        : Int32(e < 16 ? bytes[base + 4 + e] & 0xf : bytes[base + 4 + e - 16] >> 4)
                    sumi += wq * Int32(qs[t * k + b * 32 + e])
                }
                lane[l] = lane[l].addingProduct(dd, Float(sumi))
            }
            if type == .q4_1 {
                let mw = syk_fp16_to_fp32(UInt16(bytes[base + 2]) | UInt16(bytes[base + 3]) << 8)
                msum = msum.addingProduct(mw, s[t * k / 32 + b])
            }
        }
        return ((lane[4] + lane[0]) + (lane[6] + lane[2])) + ((lane[5] + lane[1]) + (lane[7] + lane[3])) + msum
    }

    @Test func gemmFastOrder() throws {
        for type in [GGMLType.q4_1, .q8_0] {
            let a = try runGemm(type, isa: Int32(SYK_ISA_SCALAR), order: Int32(SYK_SUM_FAST))
            let b = try runGemm(type, isa: Int32(SYK_ISA_AVX512VNNI), order: Int32(SYK_SUM_FAST))
            #expect(a == b, "\(type): scalar and vector fast-order gemm differ")
        }
    }

    @Test func gemmQ4_1Scalar() throws { try runGemm(.q4_1, isa: Int32(SYK_ISA_SCALAR)) }
    @Test func gemmQ8_0Scalar() throws { try runGemm(.q8_0, isa: Int32(SYK_ISA_SCALAR)) }
    @Test func gemmQ4_1Vector() throws { try runGemm(.q4_1, isa: Int32(SYK_ISA_AVX512VNNI)) }
    @Test func gemmQ8_0Vector() throws { try runGemm(.q8_0, isa: Int32(SYK_ISA_AVX512VNNI)) }

    @Test func fp16RoundTrip() {
        for v: Float in [0, 1, -2.5, 65504, 6.1e-5, 5.96e-8, 1e-9, 0.1, -0.3333] {
            let h = syk_fp32_to_fp16(v)
            #expect(abs(syk_fp16_to_fp32(h) - v) <= max(abs(v) * 1e-3, 6e-8), "\(v)")
        }
        #expect(syk_fp16_to_fp32(syk_fp32_to_fp16(1e6)).isInfinite)
    }

    @Test func attentionMatchesFloatAndPathsAgree() {
        var rng = TestRNG(seed: 3)
        let hd = 64, npos = 37, stride = 3 * hd
        let q = (0..<hd).map { _ in rng.float() }
        let kf = (0..<(npos * stride)).map { _ in rng.float() }
        let vf = (0..<(npos * stride)).map { _ in rng.float() }
        let k16 = kf.map { syk_fp32_to_fp16($0) }, v16 = vf.map { syk_fp32_to_fp16($0) }
        var outs: [[Float]] = []
        for isa in [Int32(SYK_ISA_SCALAR), Int32(SYK_ISA_AVX512VNNI)] {
            let prev = syk_get_isa(); syk_set_isa(isa); defer { syk_set_isa(prev) }
            var scores = [Float](repeating: 0, count: npos), out = [Float](repeating: 0, count: hd)
            syk_attend(q, k16, v16, Int32(stride), Int32(npos), Int32(hd), 0.125, &scores, &out)
            var s = (0..<npos).map { j in (0..<hd).reduce(Float(0)) { $0 + q[$1] * syk_fp16_to_fp32(k16[j * stride + $1]) } * 0.125 }
            let m = s.max()!
            s = s.map { expf($0 - m) }
            let z = s.reduce(0, +)
            for i in 0..<hd {
                let ref = (0..<npos).reduce(Float(0)) { $0 + s[$1] / z * syk_fp16_to_fp32(v16[$1 * stride + i]) }
                // fp16 accumulation of V (llama.cpp's flash-attention numerics): ~1e-3 relative.
                #expect(abs(out[i] - ref) < 4e-3, "isa \(isa) dim \(i): \(out[i]) vs \(ref)")
            }
            outs.append(out)
        }
        for i in 0..<hd { #expect(outs[0][i] == outs[1][i], "scalar vs vector attention dim \(i)") }
    }

    /// The tiled kernel (llama.cpp's numerics for batches of >= 64 tokens) through syk_attn_run: 70 causal
    /// tokens of one sequence (positions 0..69, so rows span one and two 64-position tiles), 6 query heads
    /// over 2 KV heads; against a float reference, and scalar vs vector bit for bit.
    @Test func tiledAttentionMatchesFloatAndPathsAgree() {
        var rng = TestRNG(seed: 5)
        let hd = 64, nhead = 6, nkv = 2, ntok = 70, kvdim = nkv * hd
        let q = (0..<(ntok * nhead * hd)).map { _ in rng.float() }
        let k16 = (0..<(ntok * kvdim)).map { _ in syk_fp32_to_fp16(rng.float()) }
        let v16 = (0..<(ntok * kvdim)).map { _ in syk_fp32_to_fp16(rng.float()) }
        var outs: [[Float]] = []
        for isa in [Int32(SYK_ISA_SCALAR), Int32(SYK_ISA_AVX512VNNI)] {
            let prev = syk_get_isa(); syk_set_isa(isa); defer { syk_set_isa(prev) }
            var out = [Float](repeating: 0, count: ntok * nhead * hd)
            var scratch = [Float](repeating: 0, count: hd * ntok)
            q.withUnsafeBufferPointer { qp in k16.withUnsafeBufferPointer { kp in v16.withUnsafeBufferPointer { vp in
            out.withUnsafeMutableBufferPointer { op in scratch.withUnsafeMutableBufferPointer { sp in
                var toks = (0..<ntok).map { t in
                    syk_attn_tok(q: qp.baseAddress! + t * nhead * hd, k: kp.baseAddress!, v: vp.baseAddress!,
                                 out: op.baseAddress! + t * nhead * hd, npos: Int32(t + 1))
                }
                toks.withUnsafeMutableBufferPointer { tp in
                    var task = syk_attn_task(toks: tp.baseAddress, ntok: Int32(ntok), nhead: Int32(nhead), nkv: Int32(nkv),
                                             hd: Int32(hd), scale: 0.125, scratch: sp.baseAddress,
                                             scratch_per_thread: Int32(hd * ntok), tiled: 1)
                    syk_attn_run(&task, 0, 1)
                }
            } } } } }
            for t in [0, 1, 63, 64, 69] {
                for h in 0..<nhead {
                    let kvh = h / (nhead / nkv)
                    var s = (0...t).map { j in
                        (0..<hd).reduce(Float(0)) { $0 + q[(t * nhead + h) * hd + $1] * syk_fp16_to_fp32(k16[j * kvdim + kvh * hd + $1]) } * 0.125
                    }
                    let m = s.max()!
                    s = s.map { expf($0 - m) }
                    let z = s.reduce(0, +)
                    for i in 0..<hd {
                        let ref = (0...t).reduce(Float(0)) { $0 + s[$1] / z * syk_fp16_to_fp32(v16[$1 * kvdim + kvh * hd + i]) }
                        // f32 scores and accumulator: only float rounding separates them.
                        #expect(abs(out[(t * nhead + h) * hd + i] - ref) < 1e-4, "isa \(isa) t\(t) h\(h) dim \(i)")
                    }
                }
            }
            outs.append(out)
        }
        #expect(outs[0] == outs[1], "scalar vs vector tiled attention differ")
    }
}
