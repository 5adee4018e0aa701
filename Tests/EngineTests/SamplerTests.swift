import Foundation
import Testing
@testable import Engine

@Suite("Sampler")
struct SamplerTests {
    static func logits(_ n: Int, seed: UInt64) -> [Float] {
        var rng = TestRNG(seed: seed)
        return (0..<n).map { _ in rng.float(-8, 8) }
    }

    static func sample(_ s: inout Sampler, _ l: [Float]) -> Int32 { l.withUnsafeBufferPointer { s.sample($0) } }

    @Test func greedyPicksArgmaxLowestIdOnTies() throws {
        var s = try Sampler(params: .greedy(), vocabSize: 8)
        #expect(Self.sample(&s, [0, 1, 5, 2, 5, -1, 0, 0]) == 2)
        #expect(Self.sample(&s, [.nan, -1, .nan, 3]) == 3)
        #expect(Self.sample(&s, [-.infinity, -.infinity]) == 0)
        #expect(Self.sample(&s, [.nan, .nan]) == 0)
        #expect(Self.sample(&s, []) == 0)
        let big = Self.logits(49152, seed: 1)
        let expected = big.indices.max { big[$0] < big[$1] || (big[$0] == big[$1] && $0 > $1) }
        #expect(Self.sample(&s, big) == Int32(expected ?? -1))
    }

    @Test func sameSeedSameSequenceDifferentSeedDifferent() throws {
        let p = SamplingParams(temperature: 1.0, topK: 0, topP: 1, minP: 0, seed: 1234)
        var a = try Sampler(params: p, vocabSize: 1000)
        var b = try Sampler(params: p, vocabSize: 1000)
        var c = try Sampler(params: SamplingParams(temperature: 1.0, topK: 0, topP: 1, minP: 0, seed: 99), vocabSize: 1000)
        var sa: [Int32] = [], sb: [Int32] = [], sc: [Int32] = []
        for step in 0..<64 {
            let l = Self.logits(1000, seed: UInt64(step)).map { $0 * 0.3 }   // flat-ish: many plausible tokens
            sa.append(Self.sample(&a, l)); sb.append(Self.sample(&b, l)); sc.append(Self.sample(&c, l))
        }
        #expect(sa == sb)
        #expect(sa != sc)
        #expect(a.seed == 1234)
        // An unseeded sampler reports the seed it drew, and that seed reproduces it.
        var r = try Sampler(params: SamplingParams(temperature: 1, seed: nil), vocabSize: 1000)
        var replay = try Sampler(params: SamplingParams(temperature: 1, seed: r.seed), vocabSize: 1000)
        let l = Self.logits(1000, seed: 7)
        for _ in 0..<16 { #expect(Self.sample(&r, l) == Self.sample(&replay, l)) }
    }

    @Test func topKOneIsGreedy() throws {
        var s = try Sampler(params: SamplingParams(temperature: 1.5, topK: 1, topP: 1, minP: 0, seed: 5), vocabSize: 4096)
        for step in 0..<50 {
            let l = Self.logits(4096, seed: UInt64(100 + step))
            #expect(Self.sample(&s, l) == l.withUnsafeBufferPointer { Sampler.argmax($0) })
        }
    }

    /// Draw many samples with a fixed seed and count.
    static func histogram(_ p: SamplingParams, _ l: [Float], draws: Int) throws -> [Int] {
        var s = try Sampler(params: p, vocabSize: l.count)
        var h = [Int](repeating: 0, count: l.count)
        for _ in 0..<draws { h[Int(Self.sample(&s, l))] += 1 }
        return h
    }

    @Test func topKExcludesTheRest() throws {
        let l: [Float] = [1, 5, 3, 4, 2, 0]
        let h = try Self.histogram(SamplingParams(temperature: 1, topK: 3, topP: 1, minP: 0, seed: 1), l, draws: 4000)
        #expect(h[0] == 0 && h[4] == 0 && h[5] == 0)
        #expect(h[1] > 0 && h[2] > 0 && h[3] > 0)
    }

    @Test func topKTiesGoToLowerIDsAndNaNIsNeverPicked() throws {
        // All equal: the k lowest ids form the top-k.
        let flat = [Float](repeating: 1, count: 100)
        let h = try Self.histogram(SamplingParams(temperature: 1, topK: 3, topP: 1, minP: 0, seed: 4), flat, draws: 3000)
        #expect(h[3...].allSatisfy { $0 == 0 })
        #expect(h[0] > 800 && h[1] > 800 && h[2] > 800)
        // NaN logits count as -infinity in every configuration.
        var l = Self.logits(300, seed: 9)
        for i in stride(from: 0, to: 300, by: 3) { l[i] = .nan }
        for p in [SamplingParams(temperature: 1, topK: 50, topP: 1, minP: 0, seed: 1),
                  SamplingParams(temperature: 1, topK: 0, topP: 0.9, minP: 0, seed: 1),
                  SamplingParams(temperature: 1, topK: 0, topP: 1, minP: 0.01, seed: 1),
                  SamplingParams(temperature: 2, topK: 0, topP: 1, minP: 0, seed: 1)] {
            let hn = try Self.histogram(p, l, draws: 500)
            #expect(stride(from: 0, to: 300, by: 3).allSatisfy { hn[$0] == 0 })
        }
        // Logprobs ignore NaN too.
        let top = l.withUnsafeBufferPointer { Logprobs.top($0, count: 5) }
        #expect(top.allSatisfy { $0.id % 3 != 0 && $0.logprob.isFinite })
    }

    @Test func topPKeepsTheSmallestPrefixReachingP() throws {
        // probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625
        let l: [Float] = [log(0.5), log(0.25), log(0.125), log(0.0625), log(0.0625)]
        // p = 0.7: 0.5 < 0.7, 0.75 >= 0.7 -> keep ids 0 and 1 only, renormalised 2:1.
        let h = try Self.histogram(SamplingParams(temperature: 1, topK: 0, topP: 0.7, minP: 0, seed: 3), l, draws: 6000)
        #expect(h[2] == 0 && h[3] == 0 && h[4] == 0)
        let ratio = Double(h[0]) / Double(max(h[1], 1))
        #expect(abs(ratio - 2) < 0.25, "ratio \(ratio)")
        // p = 0.5 exactly: the first token alone reaches it.
        let one = try Self.histogram(SamplingParams(temperature: 1, topK: 0, topP: 0.5, minP: 0, seed: 3), l, draws: 200)
        #expect(one[0] == 200)
    }

    @Test func minPExcludesUnlikelyTokens() throws {
        // probabilities relative to the max: 1, 0.5, 0.2, 0.05
        let l: [Float] = [0, log(0.5), log(0.2), log(0.05)]
        let h = try Self.histogram(SamplingParams(temperature: 1, topK: 0, topP: 1, minP: 0.1, seed: 11), l, draws: 6000)
        #expect(h[3] == 0)
        #expect(h[0] > 0 && h[1] > 0 && h[2] > 0)
        // Frequencies follow the renormalised probabilities 1 : 0.5 : 0.2 (of 1.7).
        let f0 = Double(h[0]) / 6000, f2 = Double(h[2]) / 6000
        #expect(abs(f0 - 1 / 1.7) < 0.03, "f0 \(f0)")
        #expect(abs(f2 - 0.2 / 1.7) < 0.03, "f2 \(f2)")
    }

    @Test func temperatureSharpensAndFlattens() throws {
        let l: [Float] = [1, 0]
        let cold = try Self.histogram(SamplingParams(temperature: 0.25, topK: 0, topP: 1, minP: 0, seed: 2), l, draws: 4000)
        let hot = try Self.histogram(SamplingParams(temperature: 4, topK: 0, topP: 1, minP: 0, seed: 2), l, draws: 4000)
        // p0 = 1 / (1 + e^-(1/T)): T = 0.25 -> 0.982, T = 4 -> 0.562.
        #expect(abs(Double(cold[0]) / 4000 - 0.982) < 0.02)
        #expect(abs(Double(hot[0]) / 4000 - 0.562) < 0.03)
    }

    @Test func chainOnVocabularySizedLogits() throws {
        // The default chain on real-sized logits: every pick is inside the top-k and passes min-p.
        let p = SamplingParams(temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05, seed: 42)
        var s = try Sampler(params: p, vocabSize: 49152)
        for step in 0..<20 {
            let l = Self.logits(49152, seed: UInt64(500 + step))
            let id = Int(Self.sample(&s, l))
            let rank = l.filter { $0 > l[id] }.count
            #expect(rank < 40)
            #expect(l[id] >= l.max()! + log(0.05))
        }
    }

    @Test func invalidParamsAreRejected() {
        let bad: [(SamplingParams, SamplingError)] = [
            (SamplingParams(temperature: -1), .invalidTemperature(-1)),
            (SamplingParams(temperature: 1000), .invalidTemperature(1000)),
            (SamplingParams(topK: -2), .invalidTopK(-2)),
            (SamplingParams(topP: -0.1), .invalidTopP(-0.1)),
            (SamplingParams(topP: 1.5), .invalidTopP(1.5)),
            (SamplingParams(minP: -0.1), .invalidMinP(-0.1)),
            (SamplingParams(minP: 2), .invalidMinP(2)),
            (SamplingParams(maxTokens: 0), .invalidMaxTokens(0)),
            (SamplingParams(stop: [""]), .invalidStop(index: 0, reason: "empty")),
            (SamplingParams(stop: Array(repeating: "x", count: 17)), .tooManyStops(17)),
        ]
        for (p, e) in bad {
            #expect(throws: e) { try p.validate() }
            #expect(throws: e) { try Sampler(params: p, vocabSize: 10) }
        }
        #expect(throws: SamplingError.self) { try SamplingParams(temperature: .nan).validate() }
        #expect(throws: SamplingError.invalidVocabularySize(0)) { try Sampler(params: .greedy(), vocabSize: 0) }
        #expect(throws: Never.self) { try SamplingParams().validate() }
    }

    /// logit_bias moves a token's logit; presence and frequency penalties lower tokens this sampler already
    /// returned, by presence once and frequency per time. The model's row is never written.
    @Test func logitBiasAndPenalties() throws {
        let row: [Float] = [3, 2.5, 0, 1]
        var biased = SamplingParams.greedy()
        biased.logitBias = [TokenBias(token: 2, bias: 4), TokenBias(token: 0, bias: -100)]
        var b = try Sampler(params: biased, vocabSize: 4)
        #expect(Self.sample(&b, row) == 2)   // 0 + 4 beats 3 - 100 and 2.5
        #expect(row == [3, 2.5, 0, 1])

        // Frequency 0.3: token 0 (3.0) wins twice (3.0, 2.7), then 2.4 < 2.5 and token 1 wins; then
        // 0 at 2.4 against 1 at 2.2: 0 again.
        var freq = SamplingParams.greedy()
        freq.frequencyPenalty = 0.3
        var f = try Sampler(params: freq, vocabSize: 4)
        #expect((0..<4).map { _ in Self.sample(&f, row) } == [0, 0, 1, 0])

        // Presence 0.6: once penalised, 0 (2.4) loses to 1 (2.5), which then (1.9) loses to 0 again for good.
        var pres = SamplingParams.greedy()
        pres.presencePenalty = 0.6
        var pr = try Sampler(params: pres, vocabSize: 4)
        #expect((0..<4).map { _ in Self.sample(&pr, row) } == [0, 1, 0, 0])

        // A negative penalty favours repeats: 0 wins the first row, then 2.5 + 1 beats 3 in the second
        // (plain greedy would pick 1 there).
        var neg = SamplingParams.greedy()
        neg.frequencyPenalty = -1
        var n = try Sampler(params: neg, vocabSize: 4)
        #expect(Self.sample(&n, [3, 2.5, 0, 0]) == 0 && Self.sample(&n, [2.5, 3, 0, 0]) == 0)
        var plain = try Sampler(params: .greedy(), vocabSize: 4)
        #expect(Self.sample(&plain, [3, 2.5, 0, 0]) == 0 && Self.sample(&plain, [2.5, 3, 0, 0]) == 1)
        // logit_bias alone counts nothing: the same row gives the same token every step.
        var onlyBias = SamplingParams.greedy()
        onlyBias.logitBias = [TokenBias(token: 3, bias: 1.5)]
        var ob = try Sampler(params: onlyBias, vocabSize: 4)
        #expect((0..<3).map { _ in Self.sample(&ob, row) } == [0, 0, 0])

        // Sampled (not greedy) draws respect a ban.
        var banned = SamplingParams(temperature: 1, topK: 0, topP: 1, minP: 0, seed: 3)
        banned.logitBias = [TokenBias(token: 0, bias: -100)]
        var d = try Sampler(params: banned, vocabSize: 4)
        #expect((0..<200).allSatisfy { _ in Self.sample(&d, [5, 0, 0, 0]) != 0 })

        // Out of range.
        var bad = SamplingParams.greedy()
        bad.presencePenalty = 2.5
        #expect(throws: SamplingError.invalidPenalty(name: "presence_penalty", value: 2.5)) { try bad.validate() }
        bad = .greedy(); bad.frequencyPenalty = .nan
        #expect(throws: SamplingError.self) { try bad.validate() }
        bad = .greedy(); bad.logitBias = [TokenBias(token: 1, bias: 101)]
        #expect(throws: SamplingError.invalidLogitBias(token: 1, bias: 101)) { try bad.validate() }
        bad = .greedy(); bad.logitBias = [TokenBias(token: 4, bias: 1)]
        #expect(throws: SamplingError.invalidLogitBias(token: 4, bias: 1)) { try Sampler(params: bad, vocabSize: 4) }
        bad = .greedy(); bad.logitBias = [TokenBias(token: 1, bias: 1), TokenBias(token: 1, bias: 2)]
        #expect(throws: SamplingError.invalidLogitBias(token: 1, bias: 2)) { try bad.validate() }
    }

    @Test func topLogprobsAreLogSoftmax() {
        let l: [Float] = [2, 1, 3, 3, -1]
        let top = l.withUnsafeBufferPointer { Logprobs.top($0, count: 3) }
        let z = l.map { exp(Double($0)) }.reduce(0, +)
        #expect(top.map(\.id) == [2, 3, 0])
        for t in top { #expect(abs(Double(t.logprob) - (Double(l[Int(t.id)]) - log(z))) < 1e-5) }
        #expect(l.withUnsafeBufferPointer { Logprobs.top($0, count: 10) }.count == 5)
        #expect(l.withUnsafeBufferPointer { Logprobs.top($0, count: 0) }.isEmpty)
        let lp = l.withUnsafeBufferPointer { Logprobs.logprob(of: 4, in: $0) }
        #expect(abs(Double(lp ?? 0) - (-1 - log(z))) < 1e-5)
        #expect(l.withUnsafeBufferPointer { Logprobs.logprob(of: 5, in: $0) } == nil)
    }
}

@Suite("Stop strings")
struct StopMatcherTests {
    /// Feeds pieces, returns (emitted text, matched stop).
    static func run(_ stops: [String], _ pieces: [String]) -> (String, String?) {
        var m = StopMatcher(stops: stops)
        var text = ""
        for p in pieces {
            let o = m.push(p)
            text += o.text
            if let s = o.stop { return (text, s) }
        }
        let o = m.finish()
        return (text + o.text, o.stop)
    }

    @Test func matchesAcrossPieceBoundaries() {
        #expect(Self.run(["END"], ["abc E", "N", "Dxyz"]) == ("abc ", "END"))
        #expect(Self.run(["END"], ["abc EN", "d"]) == ("abc ENd", nil))
        #expect(Self.run(["\n\n"], ["line\n", "\nmore"]) == ("line", "\n\n"))
        #expect(Self.run(["<|im_end|>"], ["Hi", "<|", "im", "_end", "|>"]) == ("Hi", "<|im_end|>"))
    }

    @Test func holdsOnlyWhatCouldStillMatch() {
        var m = StopMatcher(stops: ["STOP"])
        #expect(m.push("abc ST") == StopMatcher.Output(text: "abc ", stop: nil))
        #expect(m.push("A") == StopMatcher.Output(text: "STA", stop: nil))
        #expect(m.push("S") == StopMatcher.Output(text: "", stop: nil))
        #expect(m.finish() == StopMatcher.Output(text: "S", stop: nil))
    }

    @Test func resultDoesNotDependOnPieceBoundaries() {
        let stops = ["abc", "b", "xyz"]
        let text = "12ab3abcb"
        let whole = Self.run(stops, [text])
        #expect(whole == ("12a", "b"))
        // Every split into 1-3 pieces gives the same answer.
        let chars = Array(text)
        for i in 0...chars.count {
            for j in i...chars.count {
                let pieces = [String(chars[..<i]), String(chars[i..<j]), String(chars[j...])]
                #expect(Self.run(stops, pieces) == whole, "\(pieces)")
            }
        }
        // Earliest start wins even when a later, shorter stop completes first.
        #expect(Self.run(["abcd", "c"], ["ab", "cd"]) == ("", "abcd"))
        #expect(Self.run(["abcd", "c"], ["ab", "ce"]) == ("ab", "c"))
    }

    @Test func multibyteAndNoStops() {
        #expect(Self.run(["🙂"], ["a", "é", "🙂", "z"]) == ("aé", "🙂"))
        #expect(Self.run([], ["a", "b"]) == ("ab", nil))
        var m = StopMatcher(stops: ["x"])
        #expect(m.push("ax") == StopMatcher.Output(text: "a", stop: "x"))
        #expect(m.isStopped)
        #expect(m.push("more") == StopMatcher.Output(text: "", stop: nil))
    }
}
