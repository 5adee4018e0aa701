import Testing
import Foundation
@testable import BenchKit
import ClientKit

@Suite struct StatsTests {
    @Test func percentilesOfAUniformRamp() {
        var h = LatencyHistogram()
        for us in 1...10_000 { h.record(ns: UInt64(us) * 1000) }
        let s = h.summary
        #expect(s.count == 10_000)
        #expect(abs(s.p50Ms - 5.0) <= 0.005 * 5.0, "p50 \(s.p50Ms)")
        #expect(abs(s.p90Ms - 9.0) <= 0.005 * 9.0, "p90 \(s.p90Ms)")
        #expect(abs(s.p99Ms - 9.9) <= 0.005 * 9.9, "p99 \(s.p99Ms)")
        #expect(abs(s.p999Ms - 9.99) <= 0.005 * 9.99, "p99.9 \(s.p999Ms)")
        #expect(abs(s.meanMs - 5.0005) <= 0.005 * 5.0, "mean \(s.meanMs)")
        #expect(abs(s.maxMs - 10.0) <= 0.01)
        #expect(LatencyHistogram().summary.count == 0)
    }

    @Test func ttftTpotItlDefinitions() {
        let ms: UInt64 = 1_000_000
        let r = RequestRecord(session: 0, turn: 1, sentNs: 1000 * ms, chunkNs: [1100 * ms, 1120 * ms, 1150 * ms],
                              doneNs: 1160 * ms, promptTokens: 10, outputTokens: 4)
        #expect(r.ttftNs == 100 * ms)
        #expect(r.e2eNs == 160 * ms)
        // (160 − 100) / (4 − 1) = 20 ms: the first token is excluded.
        #expect(r.tpotNs == Double(20 * ms))
        // Per streamed chunk: 3 chunks → 2 gaps.
        #expect(r.itlNs == [20 * ms, 30 * ms])
        var one = r
        one.outputTokens = 1
        #expect(one.tpotNs == nil)
        var none = r
        none.chunkNs = []
        #expect(none.ttftNs == nil)
        #expect(none.itlNs.isEmpty)
    }

    @Test func summaryFigures() throws {
        let ms: UInt64 = 1_000_000
        func rec(_ s: Int, _ t: Int, worker: String?, ttft: UInt64, cached: Int?, error: String? = nil) -> RequestRecord {
            RequestRecord(session: s, turn: t, sentNs: 0, chunkNs: [ttft * ms, (ttft + 10) * ms], doneNs: (ttft + 10) * ms,
                          promptTokens: 100, outputTokens: 2, cachedTokens: cached, worker: worker, error: error)
        }
        let records = [
            rec(0, 1, worker: "w0", ttft: 50, cached: 0), rec(0, 2, worker: "w0", ttft: 50, cached: 80),
            rec(0, 3, worker: "w1", ttft: 300, cached: 0), rec(1, 1, worker: "w1", ttft: 50, cached: 0),
            rec(1, 2, worker: "w1", ttft: 50, cached: 90), rec(1, 3, worker: nil, ttft: 0, cached: nil, error: "overloaded_503"),
        ]
        let s = BenchSummary(records: records, durationS: 2, slo: try GoodputSLO.parse("ttft:100,tpot:50"))
        #expect(s.requests == 6)
        #expect(s.completed == 5)
        #expect(s.errors == ["overloaded_503": 1])
        #expect(s.perWorker == ["w0": 2, "w1": 3])
        // Turns ≥ 2 that succeeded: (0,2) w0 = w0 ✓, (0,3) w1 ≠ w0 ✗, (1,2) w1 = w1 ✓ → 2/3.
        #expect(abs(s.affinity! - 2.0 / 3.0) < 1e-12)
        #expect(abs(s.cacheHitRate! - 170.0 / 500.0) < 1e-12)
        // Goodput: 4 of 5 completed met ttft ≤ 100 ms (the 300 ms one did not), over 2 s.
        #expect(s.goodput == 2.0)
        #expect(s.requestThroughput == 2.5)
        #expect(s.outputTokenThroughput == 5)
        let json = s.json
        for key in ["ttft", "tpot", "itl", "e2e", "request_throughput_rps", "output_token_throughput_tps", "goodput_rps",
                    "errors", "requests_per_worker", "session_affinity", "cache_hit_rate", "completed", "duration_s"] {
            #expect(json[key] != nil, "missing \(key)")
        }
        #expect(JSONSerialization.isValidJSONObject(json))
        #expect(throws: BenchError.self) { try GoodputSLO.parse("ttft=5") }
        #expect(throws: BenchError.self) { try GoodputSLO.parse("e2e:5") }
    }
}

@Suite struct WorkloadTests {
    @Test(arguments: [5.0, 50.0, 500.0])
    func poissonArrivals(rate: Double) throws {
        let a = try ArrivalProcess(rate: rate)
        var rng = SeededRNG(seed: 11)
        let n = 200_000
        var sum = 0.0, sum2 = 0.0
        for _ in 0..<n {
            let g = a.nextGap(&rng)
            #expect(g > 0)
            sum += g
            sum2 += g * g
        }
        let mean = sum / Double(n)
        let cv2 = (sum2 / Double(n) - mean * mean) / (mean * mean)
        // Mean 1/rate within 1 % (the standard error is 1/sqrt(n) ≈ 0.22 %); exponential CV² = 1.
        #expect(abs(mean * rate - 1) < 0.01, "mean gap \(mean) at rate \(rate)")
        #expect(abs(cv2 - 1) < 0.03, "CV² \(cv2)")
    }

    @Test(arguments: [0.25, 0.5, 2.0, 4.0])
    func gammaBurstiness(burstiness: Double) throws {
        let rate = 20.0
        let a = try ArrivalProcess(rate: rate, burstiness: burstiness)
        var rng = SeededRNG(seed: 12)
        let n = 200_000
        var sum = 0.0, sum2 = 0.0
        for _ in 0..<n {
            let g = a.nextGap(&rng)
            sum += g
            sum2 += g * g
        }
        let mean = sum / Double(n)
        let cv2 = (sum2 / Double(n) - mean * mean) / (mean * mean)
        #expect(abs(mean * rate - 1) < 0.02, "mean \(mean)")
        // Gamma with shape k has CV² = 1/k: burstier traffic for k < 1.
        #expect(abs(cv2 * burstiness - 1) < 0.06, "CV² \(cv2) for burstiness \(burstiness)")
    }

    @Test func invalidArrivalParameters() {
        #expect(throws: BenchError.self) { try ArrivalProcess(rate: 0) }
        #expect(throws: BenchError.self) { try ArrivalProcess(rate: 1, burstiness: -1) }
        #expect(throws: BenchError.self) { try ArrivalProcess(rate: .infinity) }
    }

    @Test func promptLengths() throws {
        let d = try LengthDistribution.parse("200:40")
        var rng = SeededRNG(seed: 3)
        let xs = (0..<100_000).map { _ in Double(d.sample(&rng)) }
        let mean = xs.reduce(0, +) / Double(xs.count)
        let sd = (xs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(xs.count)).squareRoot()
        #expect(abs(mean - 200) < 1)
        #expect(abs(sd - 40) < 1)
        #expect(try LengthDistribution.parse("7").sample(&rng) == 7)
        #expect(throws: BenchError.self) { try LengthDistribution.parse("abc") }
        #expect(throws: BenchError.self) { try LengthDistribution.parse("10:x") }
        #expect(throws: BenchError.self) { try LengthDistribution.parse("0") }
        // Synthesized text has exactly N words.
        #expect(PromptText.make(words: 37, &rng).split(separator: " ").count == 37)
    }

    @Test func sessionsAreSeededAndAppendAnswers() throws {
        let w = try SessionWorkload(sessions: 3, turns: 3, promptTokens: .parse("20:5"), seed: 9, system: "be brief")
        let w2 = try SessionWorkload(sessions: 3, turns: 3, promptTokens: .parse("20:5"), seed: 9)
        #expect(w.userMessage(session: 1, turn: 2) == w2.userMessage(session: 1, turn: 2))
        #expect(w.userMessage(session: 1, turn: 2) != w.userMessage(session: 2, turn: 2))
        var s = SessionState(index: 1, workload: w)
        let m1 = s.nextMessages(w)
        #expect(m1.map(\.role) == ["system", "user"])
        s.finish(answer: "first answer")
        let m2 = s.nextMessages(w)
        #expect(m2.map(\.role) == ["system", "user", "assistant", "user"])
        #expect(m2[2].content == "first answer")
        s.finish(answer: nil)  // failed turn: its user message is dropped
        #expect(s.history.count == 3)
        #expect(s.nextTurn == 3)
        #expect(s.id == "bench-9-1")
        #expect(throws: BenchError.self) { try SessionWorkload(sessions: 0, turns: 1, promptTokens: .parse("5"), seed: 0) }
    }

    @Test func svgReport() throws {
        var recs: [RequestRecord] = []
        for i in 0..<50 {
            let t = UInt64(i) * 1_000_000
            recs.append(RequestRecord(session: i, turn: 1, sentNs: t, chunkNs: [t + 20_000_000 + t / 10, t + 30_000_000],
                                      doneNs: t + 40_000_000, promptTokens: 5, outputTokens: 3))
        }
        let s = BenchSummary(records: recs, durationS: 1)
        let svg = SVGPlot.report(title: "a <b> & c", runs: [("consistent-hash", s, [(0, 20), (0.5, 25)]), ("round-robin", s, [(0.2, 30)])])
        #expect(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        #expect(svg.hasSuffix("</svg>\n"))
        #expect(svg.components(separatedBy: "<polyline").count - 1 == 8)  // 4 CDF panels × 2 runs
        #expect(svg.components(separatedBy: "<circle").count - 1 == 3)
        #expect(svg.components(separatedBy: "<g>").count == svg.components(separatedBy: "</g>").count)
        #expect(svg.contains("a &lt;b&gt; &amp; c"))
        #expect(!svg.contains("nan") && !svg.contains("inf"))
    }
}
