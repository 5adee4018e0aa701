// Per-request measurements and the bench's metric definitions.
import Foundation
//
// Definitions (all client-side, monotonic clock, from the moment the request was written):
//   TTFT  time to first token = arrival of the first SSE chunk carrying content − send time.
//   E2E   end-to-end latency = arrival of the end of the response − send time.
//   TPOT  time per output token, first token excluded = (E2E − TTFT) / (output_tokens − 1); only for
//         requests with at least 2 output tokens. output_tokens = usage.completion_tokens when the server
//         reports it, else the number of content chunks.
//   ITL   inter-token latency, measured PER STREAMED CHUNK: the gaps between consecutive content-carrying
//         SSE chunks (a chunk may carry more than one token; servers that batch tokens per chunk show larger,
//         fewer ITLs).
//   Goodput  requests per second that completed without error and met every SLO given (--goodput
//         ttft:MS,tpot:MS).

/// What one request measured. Times are monotonic nanoseconds.
public struct RequestRecord: Sendable, Hashable {
    public var session: Int
    public var turn: Int
    public var sentNs: UInt64
    /// Arrival of each content-carrying chunk.
    public var chunkNs: [UInt64]
    public var doneNs: UInt64
    public var promptTokens: Int
    public var outputTokens: Int
    public var cachedTokens: Int?
    public var worker: String?
    /// nil when the request succeeded; else an error kind ("overloaded", "timeout", "http_500" ...).
    public var error: String?

    public init(session: Int, turn: Int, sentNs: UInt64, chunkNs: [UInt64], doneNs: UInt64, promptTokens: Int,
                outputTokens: Int, cachedTokens: Int? = nil, worker: String? = nil, error: String? = nil) {
        self.session = session
        self.turn = turn
        self.sentNs = sentNs
        self.chunkNs = chunkNs
        self.doneNs = doneNs
        self.promptTokens = promptTokens
        self.outputTokens = outputTokens
        self.cachedTokens = cachedTokens
        self.worker = worker
        self.error = error
    }

    public var ttftNs: UInt64? { chunkNs.first.map { $0 >= sentNs ? $0 - sentNs : 0 } }
    public var e2eNs: UInt64 { doneNs >= sentNs ? doneNs - sentNs : 0 }
    /// (E2E − TTFT) / (output_tokens − 1), nil with fewer than 2 output tokens or no first chunk.
    public var tpotNs: Double? {
        guard outputTokens >= 2, let t = ttftNs else { return nil }
        let rest = e2eNs >= t ? e2eNs - t : 0
        return Double(rest) / Double(outputTokens - 1)
    }
    /// Gaps between consecutive content chunks.
    public var itlNs: [UInt64] {
        guard chunkNs.count >= 2 else { return [] }
        return (1..<chunkNs.count).map { chunkNs[$0] >= chunkNs[$0 - 1] ? chunkNs[$0] - chunkNs[$0 - 1] : 0 }
    }
}

/// Service-level objectives for goodput.
public struct GoodputSLO: Sendable, Hashable {
    public var ttftMs: Double?
    public var tpotMs: Double?
    public init(ttftMs: Double? = nil, tpotMs: Double? = nil) {
        self.ttftMs = ttftMs
        self.tpotMs = tpotMs
    }

    /// Parses "ttft:MS,tpot:MS" (either part optional).
    public static func parse(_ s: String) throws(BenchError) -> GoodputSLO {
        var slo = GoodputSLO()
        for part in s.split(separator: ",") {
            let kv = part.split(separator: ":", maxSplits: 1)
            guard kv.count == 2, let v = Double(kv[1]), v > 0 else { throw .badOption("--goodput", s) }
            switch kv[0] {
            case "ttft": slo.ttftMs = v
            case "tpot": slo.tpotMs = v
            default: throw .badOption("--goodput", s)
            }
        }
        return slo
    }

    public func met(by r: RequestRecord) -> Bool {
        guard r.error == nil else { return false }
        if let t = ttftMs { guard let v = r.ttftNs, Double(v) / 1e6 <= t else { return false } }
        if let t = tpotMs, let v = r.tpotNs, v / 1e6 > t { return false }
        return true
    }
}

/// Invalid bench options or workload parameters.
public enum BenchError: Error, Hashable, CustomStringConvertible {
    case badOption(String, String)
    /// Starting, reaching or stopping a server the bench launched failed.
    case server(String)
    public var description: String {
        switch self {
        case .badOption(let o, let v): return "invalid \(o) '\(v)'"
        case .server(let m): return m
        }
    }
}

/// Everything the bench reports, computed from the records of the measured (non-warm-up) requests.
public struct BenchSummary: Sendable {
    public var requests: Int
    public var completed: Int
    public var durationS: Double
    public var ttft: LatencySummary
    public var tpot: LatencySummary
    public var itl: LatencySummary
    public var e2e: LatencySummary
    public var requestThroughput: Double
    public var outputTokenThroughput: Double
    public var goodput: Double?
    public var errors: [String: Int]
    public var perWorker: [String: Int]
    /// Share of turns 2..T served by the worker that served turn 1 of the same session (nil: no such turns or
    /// no X-Switchyard-Worker header).
    public var affinity: Double?
    /// sum(cached_tokens) / sum(prompt_tokens) over requests reporting cached_tokens (nil if none do).
    public var cacheHitRate: Double?
    public var promptTokens: Int
    public var outputTokens: Int
    /// Histograms, kept for plots.
    public var ttftHist: LatencyHistogram
    public var tpotHist: LatencyHistogram
    public var itlHist: LatencyHistogram
    public var e2eHist: LatencyHistogram

    /// `affinityReference`: records whose turn-1 workers define each session's home (default `records`; the
    /// runner passes warm-up requests too, since warm-up requests are often a session's first turn).
    public init(records: [RequestRecord], durationS: Double, slo: GoodputSLO? = nil,
                affinityReference: [RequestRecord]? = nil) {
        var ttftH = LatencyHistogram(), tpotH = LatencyHistogram(), itlH = LatencyHistogram(), e2eH = LatencyHistogram()
        var errors: [String: Int] = [:]
        var perWorker: [String: Int] = [:]
        var completed = 0, outTok = 0, promptTok = 0, cached = 0, cachedPrompt = 0, good = 0
        var firstWorker: [Int: String] = [:]
        for r in affinityReference ?? records where r.turn == 1 { if let w = r.worker, r.error == nil { firstWorker[r.session] = w } }
        var laterTurns = 0, sameWorker = 0
        for r in records {
            if let e = r.error {
                errors[e, default: 0] += 1
                continue
            }
            completed += 1
            outTok += r.outputTokens
            promptTok += r.promptTokens
            if let c = r.cachedTokens {
                cached += c
                cachedPrompt += r.promptTokens
            }
            if let t = r.ttftNs { ttftH.record(ns: t) }
            if let t = r.tpotNs { tpotH.record(ns: UInt64(t.rounded())) }
            for g in r.itlNs { itlH.record(ns: g) }
            e2eH.record(ns: r.e2eNs)
            if let w = r.worker { perWorker[w, default: 0] += 1 }
            if r.turn >= 2, let w = r.worker, let w1 = firstWorker[r.session] {
                laterTurns += 1
                if w == w1 { sameWorker += 1 }
            }
            if let s = slo, s.met(by: r) { good += 1 }
        }
        let d = max(durationS, 1e-9)
        self.requests = records.count
        self.completed = completed
        self.durationS = durationS
        self.ttft = ttftH.summary
        self.tpot = tpotH.summary
        self.itl = itlH.summary
        self.e2e = e2eH.summary
        self.requestThroughput = Double(completed) / d
        self.outputTokenThroughput = Double(outTok) / d
        self.goodput = slo.map { _ in Double(good) / d }
        self.errors = errors
        self.perWorker = perWorker
        self.affinity = laterTurns > 0 ? Double(sameWorker) / Double(laterTurns) : nil
        self.cacheHitRate = cachedPrompt > 0 ? Double(cached) / Double(cachedPrompt) : nil
        self.promptTokens = promptTok
        self.outputTokens = outTok
        self.ttftHist = ttftH
        self.tpotHist = tpotH
        self.itlHist = itlH
        self.e2eHist = e2eH
    }

    /// Every figure, JSON-ready (keys are the names documented for `--json`).
    public var json: [String: Any] {
        var o: [String: Any] = [
            "requests": requests, "completed": completed, "duration_s": durationS,
            "ttft": ttft.json, "tpot": tpot.json, "itl": itl.json, "e2e": e2e.json,
            "itl_definition": "per streamed chunk (gap between consecutive content-carrying SSE events)",
            "tpot_definition": "(e2e - ttft) / (output_tokens - 1), first token excluded",
            "request_throughput_rps": requestThroughput, "output_token_throughput_tps": outputTokenThroughput,
            "errors": errors, "errors_total": requests - completed, "requests_per_worker": perWorker,
            "prompt_tokens": promptTokens, "output_tokens": outputTokens,
        ]
        o["goodput_rps"] = goodput ?? NSNull()
        o["session_affinity"] = affinity ?? NSNull()
        o["cache_hit_rate"] = cacheHitRate ?? NSNull()
        return o
    }
}

/// Writes a bench's JSON document (keys sorted, pretty-printed) to `path`, or to stdout for "-"; nothing for nil.
public func writeJSONDocument(_ doc: [String: Any], to path: String?) throws {
    guard let path else { return }
    let data = try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys])
    if path == "-" {
        print(String(decoding: data, as: UTF8.self))   // through stdout's buffer, in order with the text
    } else {
        try data.write(to: URL(fileURLWithPath: path))
    }
}
