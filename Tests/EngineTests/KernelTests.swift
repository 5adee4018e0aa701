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

    /// The pool's gemm task (fused parts, threads claiming chunks of row groups from a shared counter) gives
    /// bit for bit the outputs of one direct syk_gemm per part, with 1, 2 and 3 threads, for one token and for
    /// a multi-token tile, with chunks of one group (9 groups) and of several (60 groups, QKV-shaped).
    @Test(arguments: [[48, 32, 64], [576, 192, 192]])
    func poolGemmIsBitIdenticalWhateverTheThreads(_ partRows: [Int]) throws {
        var rng = TestRNG(seed: 7)
        let k = 64, ldo = partRows.reduce(0, +)
        let packed: [[UInt8]] = partRows.map { rows in
            let (bytes, _) = Self.quantized(.q4_1, rows: rows, k: k, rng: &rng)
            var p = [UInt8](repeating: 0, count: rows / 16 * k / 32 * Int(SYK_R16_Q4_1_CHUNK))
            bytes.withUnsafeBytes { s in p.withUnsafeMutableBytes { d in syk_repack_q4_1(s.baseAddress!, d.baseAddress!, Int32(rows), Int32(k)) } }
            return p
        }
        for ntok in [1, 5] {
            let x = (0..<(ntok * k)).map { _ in rng.float() }
            var qs = [Int8](repeating: 0, count: ntok * k)
            var d = [Float](repeating: 0, count: ntok * k / 32), s = d
            var isum = [Int32](repeating: 0, count: ntok * k / 32), bias4 = [Int32](repeating: 0, count: ntok * k / 4)
            var outs: [[Float]] = []
            try qs.withUnsafeMutableBufferPointer { qp in try d.withUnsafeMutableBufferPointer { dp in try s.withUnsafeMutableBufferPointer { sp in
            try isum.withUnsafeMutableBufferPointer { ip in try bias4.withUnsafeMutableBufferPointer { bp in
                var act = syk_act(qs: qp.baseAddress, d: dp.baseAddress, s: sp.baseAddress, isum: ip.baseAddress, bias4: bp.baseAddress, K: Int32(k))
                x.withUnsafeBufferPointer { xp in for t in 0..<ntok { syk_quantize_act(xp.baseAddress! + t * k, nil, 0, &act, Int32(t), nil) } }
                try packed[0].withUnsafeBytes { p0 in try packed[1].withUnsafeBytes { p1 in try packed[2].withUnsafeBytes { p2 in
                    let ps = [p0, p1, p2].enumerated().map { i, p in
                        syk_wmat(data: p.baseAddress!.assumingMemoryBound(to: UInt8.self), type: Int32(SYK_W_R16_Q4_1), rows: Int32(partRows[i]), K: Int32(k))
                    }
                    // Direct: one syk_gemm per part into its columns.
                    var direct = [Float](repeating: .nan, count: ntok * ldo)
                    direct.withUnsafeMutableBufferPointer { op in
                        var base = 0
                        for var w in ps { syk_gemm(&w, &act, Int32(ntok), op.baseAddress! + base, Int32(ldo), 0, 0, w.rows / 16); base += Int(w.rows) }
                    }
                    for nth in 1...3 {
                        let pool = try #require(syk_pool_create(Int32(nth), 64))
                        defer { syk_pool_destroy(pool) }
                        var out = [Float](repeating: .nan, count: ntok * ldo)
                        out.withUnsafeMutableBufferPointer { op in
                            withUnsafePointer(to: &act) { ap in
                                var t = syk_gemm_task()
                                t.parts = (ps[0], ps[1], ps[2]); t.nparts = 3; t.act = ap
                                t.ntok = Int32(ntok); t.out = op.baseAddress; t.ldo = Int32(ldo); t.accumulate = 0
                                withUnsafeMutablePointer(to: &t) { syk_pool_run(pool, syk_gemm_run, $0) }
                            }
                        }
                        outs.append(out)
                        #expect(out == direct, "\(partRows) ntok \(ntok): \(nth) threads differ from direct syk_gemm")
                    }
                } } }
            } } } } }
            #expect(outs.count == 3)
        }
    }

    @discardableResult
    func runGemm(_ type: GGMLType, isa: Int32, order: Int32 = Int32(SYK_SUM_LLAMA), ntok: Int = 11) throws -> [Float] {
        var rng = TestRNG(seed: 42)
        let rows = 48, k = 96
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
        #expect(syk_set_thread_isa(isa) == isa, "ISA level \(isa) not available on this CPU")
        syk_set_thread_sum_order(order)
        defer { syk_set_thread_isa(-1); syk_set_thread_sum_order(-1) }
        let llamaOrder = order == Int32(SYK_SUM_LLAMA)
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
                if llamaOrder {
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
            let b = try runGemm(type, isa: KernelISA.best.rawValue, order: Int32(SYK_SUM_FAST))
            #expect(a == b, "\(type): scalar and vector fast-order gemm differ")
        }
    }

    /// Every ISA level this CPU supports (scalar always; AVX2 and AVX-512 where present).
    static var levels: [KernelISA] { KernelISA.allCases.filter { $0.rawValue <= KernelISA.best.rawValue } }

    @Test func gemmQ4_1Scalar() throws { try runGemm(.q4_1, isa: Int32(SYK_ISA_SCALAR)) }
    @Test func gemmQ8_0Scalar() throws { try runGemm(.q8_0, isa: Int32(SYK_ISA_SCALAR)) }
    @Test func gemmQ4_1Vector() throws { try runGemm(.q4_1, isa: KernelISA.best.rawValue) }
    @Test func gemmQ8_0Vector() throws { try runGemm(.q8_0, isa: KernelISA.best.rawValue) }

    /// llama.cpp's order at every multi-token tile width (tiles of 4 tokens, tails of 1-3) and the
    /// single-token path, for both weight types: each output is checked against llamaOrderDot.
    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8, 9])
    func gemmLlamaOrderEveryTileWidth(ntok: Int) throws {
        // Every level this CPU has (AVX-512, AVX2, scalar): each output in llama.cpp's order, so the levels
        // also agree with each other bit for bit.
        for type in [GGMLType.q4_1, .q8_0] {
            let outs = try Self.levels.map { try runGemm(type, isa: $0.rawValue, ntok: ntok) }
            for (i, o) in outs.enumerated().dropFirst() {
                #expect(o == outs[0], "\(type) ntok \(ntok): \(Self.levels[i]) differs from \(Self.levels[0]) in llama.cpp's order")
            }
        }
    }

    /// All ISA levels against the float and integer references, and against each other: the integer dot
    /// products are exact and the float epilogue is the same op sequence, so the levels agree bit for bit.
    /// Token counts cover every tile width (AVX-512 tiles of 8 tokens, AVX2 tiles of 4, remainders).
    @Test(arguments: [GGMLType.q4_1, .q8_0]) func gemmLevelsAgree(_ type: GGMLType) throws {
        for ntok in [1, 3, 4, 5, 8, 11, 17] {
            let outs = try Self.levels.map { try runGemm(type, isa: $0.rawValue, order: Int32(SYK_SUM_FAST), ntok: ntok) }
            for (i, o) in outs.enumerated().dropFirst() {
                #expect(o == outs[0], "\(type) ntok \(ntok): \(Self.levels[i]) differs from \(Self.levels[0])")
            }
        }
    }

    /// Activation quantization (with and without RMSNorm) gives the same blocks at every level.
    @Test func quantizeLevelsAgree() {
        var rng = TestRNG(seed: 9)
        let k = 576, ntok = 3
        // Mixed magnitudes (an outlier block, a zero block) exercise amax, rounding ties and saturation.
        var x = (0..<(ntok * k)).map { _ in rng.float() * 3 }
        for i in 0..<32 { x[64 + i] = 0 }
        x[100] = 250; x[101] = -0.5
        let norm = (0..<k).map { _ in rng.float(0.5, 1.5) }
        struct Q: Equatable { var qs: [Int8]; var d: [Float]; var s: [Float]; var isum: [Int32]; var bias4: [Int32]; var xout: [Float] }
        var results: [Q] = []
        for level in Self.levels {
            syk_set_thread_isa(level.rawValue); defer { syk_set_thread_isa(-1) }
            var q = Q(qs: .init(repeating: 0, count: 2 * ntok * k), d: .init(repeating: 0, count: 2 * ntok * k / 32),
                      s: .init(repeating: 0, count: 2 * ntok * k / 32), isum: .init(repeating: 0, count: 2 * ntok * k / 32),
                      bias4: .init(repeating: 0, count: 2 * ntok * k / 4), xout: .init(repeating: 0, count: ntok * k))
            q.qs.withUnsafeMutableBufferPointer { qp in q.d.withUnsafeMutableBufferPointer { dp in q.s.withUnsafeMutableBufferPointer { sp in
            q.isum.withUnsafeMutableBufferPointer { ip in q.xout.withUnsafeMutableBufferPointer { xo in q.bias4.withUnsafeMutableBufferPointer { bp in
                var act = syk_act(qs: qp.baseAddress, d: dp.baseAddress, s: sp.baseAddress, isum: ip.baseAddress, bias4: bp.baseAddress, K: Int32(k))
                for t in 0..<ntok {
                    syk_quantize_act(x.withUnsafeBufferPointer { $0.baseAddress! } + t * k, nil, 0, &act, Int32(t), nil)
                    syk_quantize_act(x.withUnsafeBufferPointer { $0.baseAddress! } + t * k, norm, 1e-5, &act, Int32(ntok + t), xo.baseAddress! + t * k)
                }
            } } } } } }
            results.append(q)
        }
        #expect(results[0].qs.contains { $0 != 0 })
        for (i, r) in results.enumerated().dropFirst() { #expect(r == results[0], "quantize: \(Self.levels[i]) differs from scalar") }
    }

    /// SwiGLU + quantize task: every level evaluates ggml's vectorized expf with the same operations and
    /// agrees bit for bit; all stay within float rounding of silu(g)*u computed with libm.
    @Test func swigluLevelsAgree() {
        var rng = TestRNG(seed: 5)
        let ff = 1568, ntok = 2
        let gu = (0..<(ntok * 2 * ff)).map { _ in rng.float() * 12 }
        var outs: [[Float]] = [], quants: [[Int8]] = []
        for level in Self.levels {
            syk_set_thread_isa(level.rawValue); defer { syk_set_thread_isa(-1) }
            var h = [Float](repeating: 0, count: ntok * ff)
            var qs = [Int8](repeating: 0, count: ntok * ff), d = [Float](repeating: 0, count: ntok * ff / 32), s = d
            var isum = [Int32](repeating: 0, count: ntok * ff / 32), bias4 = [Int32](repeating: 0, count: ntok * ff / 4)
            gu.withUnsafeBufferPointer { g in h.withUnsafeMutableBufferPointer { hp in qs.withUnsafeMutableBufferPointer { qp in
            d.withUnsafeMutableBufferPointer { dp in s.withUnsafeMutableBufferPointer { sp in isum.withUnsafeMutableBufferPointer { ip in
            bias4.withUnsafeMutableBufferPointer { bp in
                var act = syk_act(qs: qp.baseAddress, d: dp.baseAddress, s: sp.baseAddress, isum: ip.baseAddress, bias4: bp.baseAddress, K: Int32(ff))
                withUnsafePointer(to: &act) { ap in
                    var task = syk_swiglu_task(gu: g.baseAddress, h: hp.baseAddress, ff: Int32(ff), act: ap, ntok: Int32(ntok))
                    syk_swiglu_run(&task, 0, 1)
                }
            } } } } } } }
            outs.append(h); quants.append(qs)
        }
        for t in 0..<ntok {
            for i in 0..<ff {
                let g = gu[t * 2 * ff + i], u = gu[t * 2 * ff + ff + i]
                let ref = g / (1 + expf(-g)) * u
                for (l, o) in outs.enumerated() {
                    #expect(abs(o[t * ff + i] - ref) <= 1e-5 * max(1, abs(ref)), "swiglu \(Self.levels[l]) t\(t) [\(i)]")
                }
            }
        }
        for i in outs.indices { #expect(outs[i] == outs[0] && quants[i] == quants[0], "swiglu: \(Self.levels[i]) differs from scalar") }
    }

    /// Grouped attention (one KV head, G query heads) equals G single-head calls at the best level bit for
    /// bit, at every level, for positions 1...; and the scalar level stays within float rounding.
    @Test func groupedAttentionMatchesPerHead() {
        var rng = TestRNG(seed: 11)
        let hd = 64, nkv = 3, stride = nkv * hd
        for npos in [1, 2, 37, 130] {
            let k16 = (0..<(npos * stride)).map { _ in syk_fp32_to_fp16(rng.float() * 2) }
            let v16 = (0..<(npos * stride)).map { _ in syk_fp32_to_fp16(rng.float()) }
            for G in 1...4 {
                let q = (0..<(G * hd)).map { _ in rng.float() * 3 }
                var scratch = [Float](repeating: 0, count: 2 * G * npos)
                // Reference: per-head syk_attend at the best level.
                syk_set_thread_isa(KernelISA.best.rawValue)
                var ref = [Float](repeating: 0, count: G * hd)
                for g in 0..<G {
                    ref.withUnsafeMutableBufferPointer { o in
                        syk_attend(Array(q[(g * hd)..<((g + 1) * hd)]), Array(k16[hd...]), Array(v16[hd...]), Int32(stride), Int32(npos), Int32(hd), 0.125, &scratch, o.baseAddress! + g * hd)
                    }
                }
                for level in Self.levels {
                    syk_set_thread_isa(level.rawValue); defer { syk_set_thread_isa(-1) }
                    var out = [Float](repeating: 0, count: G * hd)
                    syk_attend_group(q, Array(k16[hd...]), Array(v16[hd...]), Int32(stride), Int32(npos), Int32(hd), Int32(G), 0.125, &scratch, &out)
                    if level == .scalar {
                        for i in 0..<out.count { #expect(abs(out[i] - ref[i]) < 1e-3, "scalar npos \(npos) G \(G) [\(i)]") }
                    } else {
                        #expect(out == ref, "\(level) npos \(npos) G \(G): grouped attention differs from per-head")
                    }
                }
            }
        }
    }

    /// The softmax's vector expf equals the C library's expf (what llama.cpp calls) bit for bit: every 251st
    /// float bit pattern (all signs, exponents, NaNs and infinities; ~17 M inputs), plus the region where
    /// softmax arguments live. An exhaustive run over all 2^32 inputs also found no difference.
    @Test func vectorExpfIsLibmExpf() {
        syk_set_thread_isa(KernelISA.best.rawValue); defer { syk_set_thread_isa(-1) }
        let n = 1 << 16
        var x = [Float](repeating: 0, count: n), y = x
        var bad = 0, checked = 0
        func check() {
            syk_expf_check(x, &y, Int32(n))
            for i in 0..<n {
                let e = expf(x[i])
                if e.bitPattern != y[i].bitPattern && !(e.isNaN && y[i].isNaN) {
                    if bad < 5 { Issue.record("expf(\(x[i])): libm \(e), vector \(y[i])") }
                    bad += 1
                }
            }
            checked += n
        }
        var u: UInt64 = 0
        while u < (1 << 32) {
            for i in 0..<n { x[i] = Float(bitPattern: UInt32(truncatingIfNeeded: u)); u += 251 }
            check()
        }
        var rng = TestRNG(seed: 9)
        for _ in 0..<16 { for i in 0..<n { x[i] = -rng.float().magnitude * 120 }; check() }
        #expect(bad == 0, "\(bad) of \(checked) differ")
    }

    /// Scores far apart (softmax arguments below -85, off glibc's main path) in grouped attention.
    @Test func groupedAttentionWideScores() {
        var rng = TestRNG(seed: 12)
        let hd = 64, stride = hd, npos = 75, G = 3
        let k16 = (0..<(npos * stride)).map { _ in syk_fp32_to_fp16(rng.float() * 4) }
        let v16 = (0..<(npos * stride)).map { _ in syk_fp32_to_fp16(rng.float()) }
        let q = (0..<(G * hd)).map { _ in rng.float() * 60 }
        var scratch = [Float](repeating: 0, count: 2 * G * npos)
        syk_set_thread_isa(KernelISA.best.rawValue); defer { syk_set_thread_isa(-1) }
        var ref = [Float](repeating: 0, count: G * hd), out = ref
        for g in 0..<G {
            ref.withUnsafeMutableBufferPointer { o in
                syk_attend(Array(q[(g * hd)..<((g + 1) * hd)]), k16, v16, Int32(stride), Int32(npos), Int32(hd), 0.125, &scratch, o.baseAddress! + g * hd)
            }
        }
        syk_attend_group(q, k16, v16, Int32(stride), Int32(npos), Int32(hd), Int32(G), 0.125, &scratch, &out)
        #expect(out == ref)
    }

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
        for isa in Self.levels.map(\.rawValue) {
            syk_set_thread_isa(isa); defer { syk_set_thread_isa(-1) }
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
        for o in outs.dropFirst() { for i in 0..<hd { #expect(o[i] == outs[0][i], "scalar vs vector attention dim \(i)") } }
    }

    /// The tiled kernel (llama.cpp's numerics for batches of >= 64 tokens) through syk_attn_run: causal tokens
    /// of one sequence (70: rows span one and two 64-position tiles; 150: three, the last partial), query
    /// heads over KV heads in groups of 1 to 5 (the AVX-512 level takes a group's heads in one pass for hd 64
    /// with up to 4 and hd 128 with up to 2, else head by head); against a float reference, scalar vs vector
    /// bit for bit, and split over 3 threads (each takes every 3rd token of the run) bit for bit as one thread.
    @Test(arguments: [(64, 6, 2, 70), (64, 6, 2, 150), (64, 4, 4, 70), (64, 4, 2, 70), (64, 8, 2, 70), (128, 4, 2, 70), (64, 10, 2, 70)])
    func tiledAttentionMatchesFloatAndPathsAgree(_ shape: (Int, Int, Int, Int)) {
        var rng = TestRNG(seed: 5)
        let (hd, nhead, nkv, ntok) = shape
        let kvdim = nkv * hd
        let q = (0..<(ntok * nhead * hd)).map { _ in rng.float() }
        let k16 = (0..<(ntok * kvdim)).map { _ in syk_fp32_to_fp16(rng.float()) }
        let v16 = (0..<(ntok * kvdim)).map { _ in syk_fp32_to_fp16(rng.float()) }
        var outs: [[Float]] = []
        for isa in Self.levels.map(\.rawValue) {
            syk_set_thread_isa(isa); defer { syk_set_thread_isa(-1) }
            func run(threads nth: Int) -> [Float] {
                var out = [Float](repeating: .nan, count: ntok * nhead * hd)
                var scratch = [Float](repeating: 0, count: hd * ntok * nth)
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
                        for ith in 0..<nth { syk_attn_run(&task, Int32(ith), Int32(nth)) }
                    }
                } } } } }
                return out
            }
            let out = run(threads: 1)
            #expect(run(threads: 3) == out, "isa \(isa): 3 threads differ from 1")
            for t in Set([0, 1, 63, 64, 69, ntok - 1]).sorted() {
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
        for (l, o) in outs.enumerated().dropFirst() { #expect(o == outs[0], "\(Self.levels[l]) vs scalar tiled attention differ") }
    }
}

/// The whole forward pass on the real model with each vector ISA level forced: the same greedy tokens as the
/// default (best) level, and — since the AVX2 kernels mirror the AVX-512 ones op for op — the same logits.
@Suite(.serialized) struct ISAForwardTests {
    static func greedy(_ engine: Engine, prompt: [Int32], steps: Int) throws -> (tokens: [Int32], logits: [Float]) {
        let seq = try engine.createSequence(maxContext: prompt.count + steps + 1)
        defer { engine.freeSequence(seq) }
        var out = try engine.forward([BatchItem(sequence: seq, tokens: prompt)])
        var tokens: [Int32] = [], logits: [Float] = []
        for _ in 0..<steps {
            let l = out.logits(item: 0)
            logits += l
            var best = 0
            for i in 1..<l.count where l[i] > l[best] { best = i }
            tokens.append(Int32(best))
            out = try engine.forward([BatchItem(sequence: seq, tokens: [Int32(best)])])
        }
        return (tokens, logits)
    }

    @Test func vectorLevelsGiveDefaultGreedyTokens() throws {
        let model = try Model(gguf: GGUFFile(path: TestPaths.model()))
        let engine = try Engine(model: model, threads: 2)
        let prompts: [[Int32]] = [
            [1, 9690, 198, 2683, 359, 253, 5356, 5646],
            [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47],
            Array((0..<40).map { Int32(100 + 37 * $0) }),
            Array((0..<70).map { Int32(200 + 41 * $0) }),   // >= 64 tokens: the tiled attention kernel
        ]
        // Per-engine overrides (the rest of the process keeps its level). The vector levels are compared in
        // both summation orders: every kernel does the same operations at every level, so logits agree bit
        // for bit (in llama.cpp's order this is what makes an AVX2-only CPU give llama.cpp's results too).
        // Across the orders, the first steps' greedy tokens must agree.
        defer { engine.setKernelOverrides(isa: nil, fastOrder: nil) }
        for p in prompts {
            engine.setKernelOverrides(isa: .avx512, fastOrder: true)
            let base = try Self.greedy(engine, prompt: p, steps: 8)
            engine.setKernelOverrides(isa: .avx512, fastOrder: false)
            let llama = try Self.greedy(engine, prompt: p, steps: 8)
            for level in KernelISA.allCases where level != .scalar && level.rawValue <= KernelISA.best.rawValue {
                for (fast, ref) in [(true, base), (false, llama)] {
                    engine.setKernelOverrides(isa: level, fastOrder: fast)
                    let r = try Self.greedy(engine, prompt: p, steps: 8)
                    let order = fast ? "fast order" : "llama.cpp's order"
                    #expect(r.tokens == ref.tokens, "\(level), \(order): greedy tokens \(r.tokens) vs default \(ref.tokens)")
                    var maxDiff: Float = 0
                    for i in r.logits.indices { maxDiff = max(maxDiff, abs(r.logits[i] - ref.logits[i])) }
                    #expect(maxDiff == 0, "\(level), \(order): logits differ from the default level by up to \(maxDiff)")
                }
            }
            // First step only (later steps may follow different tokens): the two orders differ in the last bits
            // of each dot product; 8-bit re-quantization between layers amplifies that to a few tenths of a
            // logit (0.63-0.72 measured on these prompts), well below a wrong-model error.
            let vocab = llama.logits.count / 8
            var maxDiff: Float = 0
            for i in 0..<vocab { maxDiff = max(maxDiff, abs(llama.logits[i] - base.logits[i])) }
            #expect(llama.tokens[0] == base.tokens[0] && maxDiff < 2, "llama.cpp order vs fast order: first-step logits differ by up to \(maxDiff)")
        }
    }
}
