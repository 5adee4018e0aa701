// Seeded workload generation: arrivals (Poisson / gamma), prompt lengths, multi-turn sessions.
import ClientKit
import Foundation

/// SplitMix64: small, fast, reproducible (same seed → same workload on every machine).
public struct SeededRNG: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
    /// Uniform in (0, 1): never 0 or 1, so logs are finite.
    public mutating func unit() -> Double { (Double(next() >> 11) + 0.5) * 0x1p-53 }
    /// Standard normal (Box–Muller).
    public mutating func normal() -> Double {
        let u1 = unit(), u2 = unit()
        return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    }
    /// Gamma(shape k, scale θ): Marsaglia–Tsang for k ≥ 1, boosted with u^(1/k) for k < 1.
    public mutating func gamma(shape k: Double, scale: Double) -> Double {
        if k < 1 { return gamma(shape: k + 1, scale: scale) * pow(unit(), 1 / k) }
        let d = k - 1.0 / 3.0
        let c = 1 / (9 * d).squareRoot()
        while true {
            var x: Double
            var v: Double
            repeat {
                x = normal()
                v = 1 + c * x
            } while v <= 0
            v = v * v * v
            let u = unit()
            if u < 1 - 0.0331 * x * x * x * x { return d * v * scale }
            if log(u) < 0.5 * x * x + d * (1 - v + log(v)) { return d * v * scale }
        }
    }
}

/// Open-loop arrival process: inter-arrival gaps with mean 1/rate. burstiness = 1 is Poisson (exponential
/// gaps); otherwise gaps are Gamma(shape = burstiness, scale = 1/(rate·burstiness)), so the mean stays 1/rate
/// and the squared coefficient of variation is 1/burstiness (< 1: burstier, > 1: more regular), as in
/// `vllm bench serve --burstiness`.
public struct ArrivalProcess: Sendable {
    public let rate: Double
    public let burstiness: Double

    public init(rate: Double, burstiness: Double = 1) throws(BenchError) {
        guard rate.isFinite, rate > 0 else { throw .badOption("--rate", "\(rate)") }
        guard burstiness.isFinite, burstiness > 0 else { throw .badOption("--burstiness", "\(burstiness)") }
        self.rate = rate
        self.burstiness = burstiness
    }

    /// Next gap in seconds.
    public func nextGap(_ rng: inout SeededRNG) -> Double {
        if burstiness == 1 { return -log(rng.unit()) / rate }
        return rng.gamma(shape: burstiness, scale: 1 / (rate * burstiness))
    }
}

/// Prompt length distribution "MEAN[:SD]" (normal, rounded, at least 1).
public struct LengthDistribution: Sendable, Hashable {
    public let mean: Double
    public let sd: Double

    public init(mean: Double, sd: Double = 0) throws(BenchError) {
        guard mean.isFinite, mean >= 1, mean <= 1_000_000, sd.isFinite, sd >= 0 else {
            throw .badOption("--prompt-tokens", "\(mean):\(sd)")
        }
        self.mean = mean
        self.sd = sd
    }

    public static func parse(_ s: String) throws(BenchError) -> LengthDistribution {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2, let m = Double(parts[0]) else { throw .badOption("--prompt-tokens", s) }
        var sd = 0.0
        if parts.count == 2 {
            guard let v = Double(parts[1]) else { throw .badOption("--prompt-tokens", s) }
            sd = v
        }
        return try LengthDistribution(mean: m, sd: sd)
    }

    public func sample(_ rng: inout SeededRNG) -> Int {
        let v = sd > 0 ? mean + sd * rng.normal() : mean
        return max(1, Int(v.rounded()))
    }
}

/// Synthesizes prompt text of about N tokens as N words drawn from a fixed list of short common English
/// words (each is one token in typical BPE vocabularies, plus the leading space).
public enum PromptText {
    static let words = [
        "the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as", "with",
        "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but", "not", "what",
        "all", "were", "we", "when", "your", "can", "said", "there", "use", "an", "each", "which", "she", "do",
        "how", "their", "if", "will", "up", "other", "about", "out", "many", "then", "them", "these", "so",
        "some", "her", "would", "make", "like", "him",
    ]

    public static func make(words n: Int, _ rng: inout SeededRNG) -> String {
        var s = ""
        s.reserveCapacity(n * 5)
        for i in 0..<n {
            if i > 0 { s += " " }
            s += words[Int(rng.next() % UInt64(words.count))]
        }
        return s
    }
}

/// Multi-turn chat sessions: turn t sends the whole history — previous user messages and the answers the
/// server gave — plus a new user message of sampled length. One session id per session, sent as
/// X-Session-Id and as body session_id/user.
public struct SessionWorkload: Sendable {
    public let sessions: Int
    public let turns: Int
    public let promptTokens: LengthDistribution
    public let seed: UInt64
    public var system: String?

    public init(sessions: Int, turns: Int, promptTokens: LengthDistribution, seed: UInt64, system: String? = nil)
        throws(BenchError)
    {
        guard sessions >= 1, sessions <= 1_000_000 else { throw .badOption("--sessions", "\(sessions)") }
        guard turns >= 1, turns <= 10_000 else { throw .badOption("--turns", "\(turns)") }
        self.sessions = sessions
        self.turns = turns
        self.promptTokens = promptTokens
        self.seed = seed
        self.system = system
    }

    /// Stable id of session i.
    public func sessionID(_ i: Int) -> String { "bench-\(String(seed, radix: 16))-\(i)" }

    /// The new user message of (session, turn): depends only on seed, session and turn, so runs with
    /// different arrival orders send the same text.
    public func userMessage(session: Int, turn: Int) -> String {
        var rng = SeededRNG(seed: seed ^ (UInt64(session) &* 0x9e37_79b9_7f4a_7c15) ^ (UInt64(turn) &* 0xc2b2_ae3d_27d4_eb4f))
        return PromptText.make(words: promptTokens.sample(&rng), &rng)
    }
}

/// State of one session while the bench runs.
public struct SessionState: Sendable {
    public let index: Int
    public let id: String
    public var history: [ChatMessage]
    /// Next turn to send, 1-based.
    public var nextTurn = 1

    public init(index: Int, workload: SessionWorkload) {
        self.index = index
        self.id = workload.sessionID(index)
        self.history = workload.system.map { [ChatMessage(role: "system", content: $0)] } ?? []
    }

    /// Messages of the next turn (history + new user message); call `finish(answer:)` after it completes.
    public mutating func nextMessages(_ w: SessionWorkload) -> [ChatMessage] {
        history.append(ChatMessage(role: "user", content: w.userMessage(session: index, turn: nextTurn)))
        return history
    }

    /// Appends the answer (empty on error: the user message is dropped so the next turn retries cleanly).
    public mutating func finish(answer: String?) {
        if let a = answer {
            history.append(ChatMessage(role: "assistant", content: a))
        } else if history.last?.role == "user" {
            history.removeLast()
        }
        nextTurn += 1
    }
}
