import Testing
@testable import Front
import Wire

private func decode(_ kind: RouteKind, _ body: String, header: String? = nil) throws(APIError) -> APIRequest {
    try APIDecoder.decodeGeneration(kind: kind, body: Array(body.utf8), id: 7, sessionHeader: header, peer: .unix(uid: 1, pid: 2))
}

private func apiError(_ kind: RouteKind, _ body: String) -> APIError? {
    do { _ = try decode(kind, body); return nil } catch { return error }
}

@Suite struct APIDecodingTests {
    @Test func chat() throws {
        let r = try decode(.chatCompletions, #"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"max_tokens":5,"temperature":0,"top_p":0.9,"top_k":40,"min_p":0.05,"seed":42,"stop":"x","n":1,"stream":true,"stream_options":{"include_usage":true},"user":"u"}"#)
        #expect(r.messages == [ChatMessage(role: .system, content: "s"), ChatMessage(role: .user, content: "ab")])
        #expect(r.sampling.maxTokens == 5)
        #expect(r.sampling.temperature == 0)
        #expect(r.sampling.topK == 40)
        #expect(r.sampling.seed == 42)
        #expect(r.sampling.stop == ["x"])
        #expect(r.stream && r.includeUsage)
        #expect(r.sessionKey == "u")
        #expect(r.model == "m")
        #expect(r.peer == .unix(uid: 1, pid: 2))
    }

    /// The front's copies of the wire limits match the Wire module's; at the limits requests decode, and
    /// `developer` messages reach the worker's template as system messages; `model: null` is no model.
    @Test func wireLimitsAndRoles() throws {
        #expect(APIDecoder.WireLimits.maxMessages == Wire.WireLimits.maxMessages)
        #expect(APIDecoder.WireLimits.maxStopLength == Wire.WireLimits.maxStopLength)
        #expect(APIDecoder.WireLimits.maxSessionKey == Wire.WireLimits.maxSessionKey)
        let key = String(repeating: "k", count: 256)
        #expect(try decode(.completions, #"{"prompt":"p","stop":""# + String(repeating: "é", count: 128) + #"","model":null}"#, header: key).sessionKey == key)
        #expect(throws: APIError.self) { try decode(.completions, #"{"prompt":"p"}"#, header: key + "k") }
        let r = try decode(.chatCompletions, #"{"messages":[{"role":"developer","content":"d"},{"role":"user","content":"u"}]}"#)
        #expect(r.messages.map(\.role.wireRole) == ["system", "user"] && r.model == nil)
    }

    /// Integer fields take integral numbers written with a fraction or exponent; non-integral ones and ones
    /// beyond 2^53 are refused, naming the field.
    @Test func integralNumbers() throws {
        #expect(try decode(.completions, #"{"prompt":"p","max_tokens":1e2,"top_k":40.0}"#).sampling.maxTokens == 100)
        #expect(try decode(.completions, #"{"prompt":"p","top_k":4.0e1}"#).sampling.topK == 40)
        #expect(apiError(.completions, #"{"prompt":"p","max_tokens":1e30}"#)?.message.contains("out of range") == true)
        #expect(apiError(.completions, #"{"prompt":"p","max_tokens":18446744073709551616}"#)?.param == "max_tokens")
        #expect(apiError(.completions, #"{"prompt":"p","max_tokens":2.5}"#)?.code == "invalid_type")
    }

    @Test func sessionKeyPrecedence() throws {
        let body = #"{"prompt":"p","session_id":"s","user":"u"}"#
        #expect(try decode(.completions, body, header: "h").sessionKey == "h")
        #expect(try decode(.completions, body).sessionKey == "s")
        #expect(try decode(.completions, #"{"prompt":"p","user":"u"}"#).sessionKey == "u")
        #expect(try decode(.completions, #"{"prompt":"p"}"#).sessionKey == nil)
        #expect(try decode(.completions, #"{"prompt":["one"]}"#).prompt == "one")
    }

    @Test(arguments: [
        (RouteKind.chatCompletions, #"{"messages":[{"role":"wizard","content":"x"}]}"#, "messages[0].role"),
        (.chatCompletions, #"{"messages":[]}"#, "messages"),
        (.chatCompletions, #"{"messages":"hi"}"#, "messages"),
        (.chatCompletions, #"{}"#, "messages"),
        (.chatCompletions, #"{"messages":[{"role":"user"}]}"#, "messages[0].content"),
        (.chatCompletions, #"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#, "messages[0].content[0]"),
        (.completions, #"{"prompt":"p","temperature":"hot"}"#, "temperature"),
        (.completions, #"{"prompt":"p","temperature":3}"#, "temperature"),
        (.completions, #"{"prompt":"p","top_p":-0.5}"#, "top_p"),
        (.completions, #"{"prompt":"p","top_k":-1}"#, "top_k"),
        (.completions, #"{"prompt":"p","min_p":1.5}"#, "min_p"),
        (.completions, #"{"prompt":"p","max_tokens":0}"#, "max_tokens"),
        (.completions, #"{"prompt":"p","max_tokens":1.5}"#, "max_tokens"),
        (.completions, #"{"prompt":"p","n":2}"#, "n"),
        (.completions, #"{"prompt":"p","seed":1.5}"#, "seed"),
        (.completions, #"{"prompt":"p","stop":["a","b","c","d","e"]}"#, "stop"),
        (.completions, #"{"prompt":"p","stop":[1]}"#, "stop"),
        (.completions, #"{"prompt":"p","stream":"yes"}"#, "stream"),
        (.completions, #"{"prompt":"p","stream_options":{"include_usage":true}}"#, "stream_options"),
        (.completions, #"{"prompt":5}"#, "prompt"),
        (.completions, #"{"prompt":["a","b"]}"#, "prompt"),
        (.completions, #"{"prompt":"p","user":3}"#, "user"),
        (.chatCompletions, #"{"messages":[{"role":"user","content":"x"}],"max_tokens":"abc","max_completion_tokens":5}"#, "max_tokens"),
        (.completions, #"{"prompt":"p","model":""# + String(repeating: "m", count: 257) + #""}"#, "model"),
        (.completions, #"{"prompt":"p","stop":[""# + String(repeating: "é", count: 129) + #""]}"#, "stop"),
        (.completions, #"{"prompt":"p","user":""# + String(repeating: "u", count: 257) + #""}"#, "user"),
        (.completions, #"{"prompt":"p","session_id":""# + String(repeating: "s", count: 257) + #""}"#, "session_id"),
        (.chatCompletions, #"{"messages":["# + Array(repeating: #"{"role":"user","content":"x"}"#, count: 4097).joined(separator: ",") + "]}", "messages"),
    ])
    func invalid(kind: RouteKind, body: String, param: String) {
        let e = apiError(kind, body)
        #expect(e?.status == 400)
        #expect(e?.param == param, "\(body)")
        #expect(e?.type == "invalid_request_error")
    }

    /// Strings without escapes take the reader's fast path; with escapes the byte-by-byte one. Both are strict.
    @Test func jsonStrings() throws {
        func str(_ json: [UInt8]) throws -> String? {
            if case .string(let s) = try JSON.parse(json) { return s }
            return nil
        }
        #expect(try str(Array(#""plain ascii""#.utf8)) == "plain ascii")
        #expect(try str(Array(#""héllo €""#.utf8)) == "héllo €")
        #expect(try str(Array(#""a\nb\u00e9\"c""#.utf8)) == "a\nbé\"c")
        #expect(try str(Array(#""é\té""#.utf8)) == "é\té")
        #expect(try str(Array(#""""#.utf8)) == "")
        for bad: [UInt8] in [[34, 0xC3, 34], [34, 97, 0xFF, 34], [34, 92, 110, 0xC3, 34], [34, 97, 10, 34], [34, 97, 98]] {
            #expect(throws: JSONError.self, "\(bad)") { try JSON.parse(bad) }
        }
    }

    @Test func invalidJSON() {
        #expect(apiError(.completions, "{")?.code == "invalid_json")
        #expect(apiError(.completions, "[1]")?.code == "invalid_json")
        #expect(apiError(.completions, "")?.code == "invalid_json")
    }

    @Test func tokenizeShapes() throws {
        let t = try APIDecoder.decodeTokenize(Array(#"{"content":"hi","add_special":true}"#.utf8))
        #expect(t.content == "hi" && t.addSpecial && t.parseSpecial)
        #expect(try APIDecoder.decodeDetokenize(Array(#"{"tokens":[1,2,3]}"#.utf8)) == [1, 2, 3])
        #expect(throws: APIError.self) { try APIDecoder.decodeDetokenize(Array(#"{"tokens":[-1]}"#.utf8)) }
        #expect(throws: APIError.self) { try APIDecoder.decodeTokenize(Array(#"{"content":1}"#.utf8)) }
    }

    @Test func metricsRender() {
        let m = MetricsRegistry()
        m.add("req_total", help: "h", labels: [("route", "a"), ("status", "200")])
        m.add("req_total", labels: [("route", "a"), ("status", "200")], 2)
        m.observe("lat", buckets: [0.1, 1], 0.5)
        let text = m.render()
        #expect(text.contains("# TYPE req_total counter\nreq_total{route=\"a\",status=\"200\"} 3\n"))
        #expect(text.contains("lat_bucket{le=\"0.1\"} 0\nlat_bucket{le=\"1\"} 1\nlat_bucket{le=\"+Inf\"} 1\n"))
        #expect(text.contains("lat_count 1"))
    }

    /// Each observation is stored once, in its first bucket; rendering gives Prometheus's cumulative counts
    /// (a value on a bound counts in that bucket, one above every bound only in +Inf), whatever order the
    /// bounds were given in.
    @Test func histogramBucketsAreCumulative() throws {
        let m = MetricsRegistry()
        for v in [0.05, 0.1, 0.3, 1.0, 2.0, 7.0] { m.observe("h", buckets: [1, 0.1, 5], v) }
        let h = try #require(m.handle("h", kind: .histogram, buckets: [0.1, 1, 5]))
        m.observe(h, 0.01)
        let text = m.render()
        #expect(text.contains("h_bucket{le=\"0.1\"} 3\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"5\"} 6\nh_bucket{le=\"+Inf\"} 7\n"), "\(text)")
        #expect(text.contains("h_count 7"))
    }

    /// Updates through a handle land in the same series as updates by name and labels.
    @Test func metricsHandles() throws {
        let m = MetricsRegistry()
        let labels = [("route", "a"), ("status", "200")]
        m.add("req_total", help: "h", labels: labels)
        let c = try #require(m.handle("req_total", kind: .counter, labels: labels))
        m.add(c)
        m.add(c, 2)
        #expect(m.value("req_total", labels: labels) == 4)
        let g = try #require(m.handle("in_flight", kind: .gauge))
        m.set(g, 7)
        #expect(m.value("in_flight") == 7)
        m.observe("lat", buckets: [0.1, 1], 0.5)
        let h = try #require(m.handle("lat", kind: .histogram, buckets: [0.1, 1]))
        m.observe(h, 0.05)
        #expect(m.histogramCount("lat") == 2)
        #expect(m.render().contains("lat_bucket{le=\"0.1\"} 1\nlat_bucket{le=\"1\"} 2\n"))
        // A name already used with another kind gives no handle.
        #expect(m.handle("req_total", kind: .gauge, labels: labels) == nil)
    }

    @Test func echoSplitKeepsText() {
        let s = "  hello  wide\nworld "
        #expect(EchoBackend.split(s).joined() == s)
        #expect(EchoBackend.split("a b c").count == 3)
    }
}

@Suite struct JSONFieldLookupTests {
    @Test func keysOfTheSameLength() throws {
        let v = try JSON.parse(Array(#"{"top_p":0.5,"top_k":7,"model":"m","tópk":1}"#.utf8))
        #expect(v["top_k"] == .number(7, integer: 7))
        #expect(v["top_p"] == .number(0.5, integer: nil))
        #expect(v["model"] == .string("m"))
        #expect(v["tópk"] == .number(1, integer: 1))
        #expect(v["topk"] == nil)
        #expect(v["top_"] == nil)
        #expect(JSONValue.string("x")["x"] == nil)  // not an object
    }
}

@Suite struct JSONNumberTests {
    /// Integers of up to 15 digits are read without text conversion; the result must equal the text
    /// conversion's (Double and Int64) for every length, sign and boundary, and longer ones take that path.
    @Test func directIntegersEqualTextConversion() throws {
        var cases = ["0", "-0", "1", "-1", "7", "10", "99", "1000", "123456789012345", "-123456789012345",
                     "999999999999999", "1234567890123456", "9223372036854775807", "-9223372036854775808",
                     "9223372036854775808", "12345678901234567890"]
        var x: Int64 = 1
        for _ in 0..<15 { cases.append(String(x)); cases.append(String(-x)); cases.append(String(x - 1)); x *= 10 }
        for text in cases {
            let v = try JSON.parse(Array(text.utf8))
            guard case .number(let d, let i) = v else { Issue.record("\(text): not a number"); continue }
            #expect(d == Double(text)!, "\(text)")
            #expect(d.sign == Double(text)!.sign, "\(text): sign")
            #expect(i == Int64(text), "\(text)")
        }
        for bad in ["01", "-", "-01", "1.", "+1", "--1"] {
            #expect(throws: JSONError.self, "\(bad)") { try JSON.parse(Array(bad.utf8)) }
        }
    }
}

/// JSON.parseObject (the request decoder's one-pass reader of known top-level fields) must agree with
/// JSON.parse on every input: the same known values, the same errors at the same offsets, the same verdict
/// for a valid non-object.
@Suite struct JSONKnownFieldsTests {
    static let keys = JSONKeys(["prompt", "max_tokens", "top_k", "top_p", "stop", "user"])

    /// parse's verdict in parseObject's terms: the known keys' values, or its error, or nil for a non-object.
    static func viaParse(_ b: [UInt8]) -> Result<[JSONValue?]?, JSONError> {
        do {
            let v = try JSON.parse(b)
            guard case .object = v else { return .success(nil) }
            return .success(keys.names.map { v[$0] })
        } catch { return .failure(error) }
    }

    static func viaParseObject(_ b: [UInt8]) -> Result<[JSONValue?]?, JSONError> {
        var got = [JSONValue?](repeating: nil, count: keys.names.count)
        var visits = 0
        do {
            let isObject = try JSON.parseObject(b, keys: keys) { k, v in got[k] = v; visits += 1 }
            if !isObject { return visits == 0 ? .success(nil) : .success([]) }
            return .success(got)
        } catch { return .failure(error) }
    }

    static let cases: [String] = [
        #"{"prompt":"h","max_tokens":1}"#,
        #" { "prompt" : "h" , "max_tokens" : 1 } "#,
        #"{}"#, #"{ }"#, #"[1]"#, #""s""#, #"3"#, #"null"#, #"{"#, #"{"prompt""#, #"{"prompt":}"#,
        #"{"prompt":"a","prompt":"b"}"#,                        // duplicate known key
        #"{"pr\u006fmpt":"a","prompt":"b"}"#,                   // the same key, one escaped
        #"{"pr\u006fmpt":"a"}"#,                                // an escaped known key alone
        #"{"x":1,"x":2}"#,                                      // duplicate unknown key
        #"{"x":1,"\u0078":2}"#,
        #"{"x":{"a":1,"a":2}}"#,                                // duplicate inside a skipped value
        #"{"x":[1,{"b":[true,false,null]}],"stop":["a","b"],"top_k":40,"top_p":0.9}"#,
        #"{"prompt":"h"} x"#, #"{"prompt":"h"}}"#, #"{"prompt":"h",}"#, #"{,}"#, #"{"a" 1}"#,
        #"{"prompt":"\ud800"}"#, #"{"\ud800":1}"#, #"{"prom"#, #"{"prompt":"h","max_tokens":01}"#,
        #"{"user":"u","topk":1,"top_":2,"top_kk":3,"TOP_K":4}"#,
        "{\"prompt\":\"a\u{7}\"}", "{\"k\u{1}\":1}",
        #"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17,"r":18,"a":19}"#,
        #"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17,"r":18,"prompt":"x"}"#,
    ]

    @Test func agreesWithParse() {
        for c in Self.cases {
            let b = Array(c.utf8)
            #expect(Self.viaParseObject(b) == Self.viaParse(b), "\(c)")
        }
        // Invalid UTF-8 in a key and in a value.
        for b: [UInt8] in [[123, 34, 0xFF, 34, 58, 49, 125], [123, 34, 112, 34, 58, 34, 0xC3, 34, 125], [123, 34]] {
            #expect(Self.viaParseObject(b) == Self.viaParse(b), "\(b)")
        }
    }

    /// Every prefix of valid requests: truncated bodies fail identically at every cut.
    @Test func prefixesAgree() {
        for c in Self.cases.prefix(2) + [Self.cases[17]] {
            let b = Array(c.utf8)
            for n in 0...b.count {
                let p = Array(b[..<n])
                #expect(Self.viaParseObject(p) == Self.viaParse(p), "\(String(decoding: p, as: UTF8.self))")
            }
        }
    }

    /// Completions prompts in OpenAI's four shapes (one prompt: n = 1): a string, [string], [ids], [[ids]];
    /// ids are integers from 0 (the worker checks its vocabulary). Anything else is a 400 naming `prompt`.
    @Test func promptShapes() throws {
        #expect(try decode(.completions, #"{"prompt":"p"}"#).prompt == "p")
        #expect(try decode(.completions, #"{"prompt":["p"]}"#).prompt == "p")
        let ids = try decode(.completions, #"{"prompt":[504,3575,0,2147483647]}"#)
        #expect(ids.promptTokens == [504, 3575, 0, Int32.max] && ids.prompt == "")
        #expect(try decode(.completions, #"{"prompt":[[7,8]]}"#).promptTokens == [7, 8])
        #expect(try decode(.completions, #"{"prompt":"p"}"#).promptTokens == nil)
        for body in [#"{"prompt":[]}"#, #"{"prompt":[[]]}"#, #"{"prompt":["a","b"]}"#, #"{"prompt":[[1],[2]]}"#,
                     #"{"prompt":[1,"a"]}"#, #"{"prompt":[-1]}"#, #"{"prompt":[1.5]}"#, #"{"prompt":[2147483648]}"#,
                     #"{"prompt":[true]}"#, #"{"prompt":{"a":1}}"#, #"{"prompt":7}"#] {
            let e = apiError(.completions, body)
            #expect(e?.status == 400 && e?.param == "prompt", "\(body): \(String(describing: e))")
        }
        let r = try decode(.completions, #"{"prompt":[5,6]}"#)
        #expect(WorkerPool.submitRecord(for: r, defaults: SamplingDefaults(), defaultMaxTokens: 8).promptTokens == [5, 6])
    }

    /// presence/frequency penalties in -2...2; logit_bias an object of decimal token ids to -100...100, no
    /// token twice, at most 1024; all reach the worker's record (defaults 0 and none).
    @Test func penaltiesAndLogitBias() throws {
        let r = try decode(.completions, #"{"prompt":"p","presence_penalty":-2,"frequency_penalty":0.5,"logit_bias":{"7042":-100,"0":2.5}}"#)
        #expect(r.sampling.presencePenalty == -2 && r.sampling.frequencyPenalty == 0.5)
        #expect(r.sampling.logitBias == [LogitBias(token: 7042, bias: -100), LogitBias(token: 0, bias: 2.5)])
        let w = WorkerPool.submitRecord(for: r, defaults: SamplingDefaults(), defaultMaxTokens: 8).sampling
        #expect(w.presencePenalty == -2 && w.frequencyPenalty == 0.5)
        #expect(w.logitBias == [WireLogitBias(token: 7042, bias: -100), WireLogitBias(token: 0, bias: 2.5)])
        let plain = WorkerPool.submitRecord(for: try decode(.completions, #"{"prompt":"p","logit_bias":null}"#),
                                            defaults: SamplingDefaults(), defaultMaxTokens: 8).sampling
        #expect(plain.presencePenalty == 0 && plain.frequencyPenalty == 0 && plain.logitBias.isEmpty)
        let many = "{" + (0..<1025).map { "\"\($0)\":1" }.joined(separator: ",") + "}"
        for (body, param) in [
            (#"{"prompt":"p","presence_penalty":2.5}"#, "presence_penalty"),
            (#"{"prompt":"p","frequency_penalty":"1"}"#, "frequency_penalty"),
            (#"{"prompt":"p","logit_bias":{"a":1}}"#, "logit_bias"),
            (#"{"prompt":"p","logit_bias":{"-1":1}}"#, "logit_bias"),
            (#"{"prompt":"p","logit_bias":{"99999999999":1}}"#, "logit_bias"),
            (#"{"prompt":"p","logit_bias":{"1":101}}"#, "logit_bias"),
            (#"{"prompt":"p","logit_bias":{"1":"x"}}"#, "logit_bias"),
            (#"{"prompt":"p","logit_bias":{"1":1,"01":2}}"#, "logit_bias"),
            (#"{"prompt":"p","logit_bias":[1]}"#, "logit_bias"),
            (#"{"prompt":"p","logit_bias":"# + many + "}", "logit_bias"),
        ] {
            let e = apiError(.completions, body)
            #expect(e?.status == 400 && e?.param == param, "\(body.prefix(80)): \(String(describing: e))")
        }
        #expect(APIDecoder.WireLimits.maxLogitBiases == Wire.WireLimits.maxLogitBiases)
        #expect(APIDecoder.WireLimits.maxSchemaBytes == Wire.WireLimits.maxSchemaBytes)
    }

    /// response_format: text (the default), json_object or json_schema; other types are 400s naming it.
    @Test func responseFormat() throws {
        let chat = #"{"messages":[{"role":"user","content":"u"}],"#
        #expect(try decode(.chatCompletions, chat + #""response_format":{"type":"json_object"}}"#).sampling.jsonObject)
        #expect(try !decode(.chatCompletions, chat + #""response_format":{"type":"text"}}"#).sampling.jsonObject)
        #expect(try !decode(.chatCompletions, chat + #""response_format":null}"#).sampling.jsonObject)
        let r = try decode(.completions, #"{"prompt":"p","response_format":{"type":"json_object"}}"#)
        #expect(WorkerPool.submitRecord(for: r, defaults: SamplingDefaults(), defaultMaxTokens: 8).sampling.jsonObject)
        for body in [#""response_format":{"type":"json_schema","json_schema":{}}}"#, #""response_format":{"type":"yaml"}}"#,
                     #""response_format":{"type":"json_schema"}}"#,
                     #""response_format":"json_object"}"#, #""response_format":{}}"#] {
            let e = apiError(.chatCompletions, chat + body)
            #expect(e?.status == 400 && e?.param == "response_format", "\(body): \(String(describing: e))")
        }
    }

    /// Chat: `logprobs: true` (+ `top_logprobs` 0...20, only with it); completions: `logprobs` 0...5, and
    /// no `top_logprobs`. Null is absent; every other value is a 400 naming the field.
    @Test func logprobsFields() throws {
        #expect(try decode(.chatCompletions, #"{"messages":[{"role":"user","content":"u"}]}"#).sampling.logprobs == nil)
        #expect(try decode(.chatCompletions, #"{"messages":[{"role":"user","content":"u"}],"logprobs":false,"top_logprobs":null}"#).sampling.logprobs == nil)
        #expect(try decode(.chatCompletions, #"{"messages":[{"role":"user","content":"u"}],"logprobs":true}"#).sampling.logprobs == 0)
        #expect(try decode(.chatCompletions, #"{"messages":[{"role":"user","content":"u"}],"logprobs":true,"top_logprobs":20}"#).sampling.logprobs == 20)
        #expect(try decode(.completions, #"{"prompt":"p","logprobs":null}"#).sampling.logprobs == nil)
        #expect(try decode(.completions, #"{"prompt":"p","logprobs":0}"#).sampling.logprobs == 0)
        #expect(try decode(.completions, #"{"prompt":"p","logprobs":5}"#).sampling.logprobs == 5)
        let chat = #"{"messages":[{"role":"user","content":"u"}],"#
        for (kind, body, param) in [
            (RouteKind.chatCompletions, chat + #""top_logprobs":2}"#, "top_logprobs"),
            (.chatCompletions, chat + #""logprobs":false,"top_logprobs":2}"#, "top_logprobs"),
            (.chatCompletions, chat + #""logprobs":true,"top_logprobs":21}"#, "top_logprobs"),
            (.chatCompletions, chat + #""logprobs":true,"top_logprobs":-1}"#, "top_logprobs"),
            (.chatCompletions, chat + #""logprobs":1}"#, "logprobs"),
            (.completions, #"{"prompt":"p","logprobs":6}"#, "logprobs"),
            (.completions, #"{"prompt":"p","logprobs":true}"#, "logprobs"),
            (.completions, #"{"prompt":"p","logprobs":1,"top_logprobs":1}"#, "top_logprobs"),
        ] {
            let e = apiError(kind, body)
            #expect(e?.status == 400 && e?.param == param, "\(body): \(String(describing: e))")
        }
        // What the pool sends the worker.
        let r = try decode(.completions, #"{"prompt":"p","logprobs":3}"#)
        #expect(WorkerPool.submitRecord(for: r, defaults: SamplingDefaults(), defaultMaxTokens: 8).sampling.logprobs == 3)
        let off = try decode(.completions, #"{"prompt":"p"}"#)
        #expect(WorkerPool.submitRecord(for: off, defaults: SamplingDefaults(), defaultMaxTokens: 8).sampling.logprobs == nil)
    }

    /// OpenAI's two logprobs shapes, from the same steps: chat's content list with top_logprobs lists, and
    /// the legacy completions' parallel arrays with top_logprobs objects (top n plus the sampled token, no
    /// key twice) and text offsets in characters that run on across a stream's chunks.
    @Test func logprobsShapes() throws {
        let a = LogprobToken(bytes: Array("Hé".utf8), logprob: -0.5)
        let b = LogprobToken(bytes: [0xE2, 0x82], logprob: -1.25)   // a piece ending inside "€"
        let c = LogprobToken(bytes: Array("x".utf8), logprob: -2)
        let steps = [LogprobStep(token: a, top: [a, c]), LogprobStep(token: b, top: [c, LogprobToken(bytes: [0xE2], logprob: -.infinity)])]
        var w = JSONWriter()
        var offset = 0
        OpenAIEncoder.logprobs(&w, chat: true, steps[...], top: 1, textOffset: &offset)
        let chat = try JSON.parse(w.bytes)
        guard case .array(let content)? = chat["content"] else { Issue.record("no content"); return }
        #expect(content.count == 2 && chat["refusal"] == .null)
        #expect(content[0]["token"] == .string("Hé") && content[0]["logprob"] == .number(-0.5, integer: nil))
        #expect(content[0]["bytes"] == .array([.number(72, integer: 72), .number(195, integer: 195), .number(169, integer: 169)]))
        #expect(content[0]["top_logprobs"] == .array([.object([("token", .string("Hé")), ("logprob", .number(-0.5, integer: nil)),
                                                               ("bytes", content[0]["bytes"]!)])]))
        #expect(content[1]["token"] == .string("\u{FFFD}") && content[1]["logprob"] == .number(-1.25, integer: nil))

        w.reset()
        offset = 10
        OpenAIEncoder.logprobs(&w, chat: false, steps[...], top: 2, textOffset: &offset)
        let legacy = try JSON.parse(w.bytes)
        // A piece that is not whole characters is spelled with its bytes in the legacy shape (no `bytes` field there).
        #expect(legacy["tokens"] == .array([.string("Hé"), .string(#"bytes:\xe2\x82"#)]))
        #expect(legacy["token_logprobs"] == .array([.number(-0.5, integer: nil), .number(-1.25, integer: nil)]))
        // "Hé" is two characters; the partial "€" starts one.
        #expect(legacy["text_offset"] == .array([.number(10, integer: 10), .number(12, integer: 12)]))
        #expect(offset == 13)
        guard case .array(let tops)? = legacy["top_logprobs"], tops.count == 2 else { Issue.record("no top_logprobs"); return }
        #expect(tops[0] == .object([("Hé", .number(-0.5, integer: nil)), ("x", .number(-2, integer: nil))]))
        // The sampled token first, then the top 2: "x" and a lone 0xE2 (its own key; -inf written as -9999.0).
        #expect(tops[1] == .object([(#"bytes:\xe2\x82"#, .number(-1.25, integer: nil)), ("x", .number(-2, integer: nil)),
                                    (#"bytes:\xe2"#, .number(-9999, integer: nil))]))
        // Two tokens that read the same: the key holds the sampled one's value.
        w.reset()
        let twin = LogprobToken(bytes: Array("x".utf8), logprob: -0.1)
        OpenAIEncoder.logprobs(&w, chat: false, [LogprobStep(token: twin, top: [c])][...], top: 1, textOffset: &offset)
        #expect(try JSON.parse(w.bytes)["top_logprobs"] == .array([.object([("x", .number(-0.1, integer: nil))])]))
    }

    @Test func requestDecodingKeepsItsErrors() {
        #expect(apiError(.completions, #"{"prompt":"a","pr\u006fmpt":"b"}"#)?.message == #"invalid JSON at byte 27: duplicate key "prompt""#)
        #expect(apiError(.completions, "[1]")?.message == "request body must be a JSON object, got array")
        #expect(apiError(.completions, #"{"x":{"y":1,"y":2},"prompt":"p"}"#)?.code == "invalid_json")
    }
}

/// What the pool sends a worker: each sampling field the request set, the server's default for each it left
/// out (llama-server's by default: temperature 0.8, top_p 0.95, top_k 40, min_p 0.05), max_tokens likewise.
@Test func submitRecordTakesTheServersDefaultsForOmittedSamplingFields() throws {
    var defaults = SamplingDefaults()
    #expect(defaults.temperature == 0.8 && defaults.topP == 0.95 && defaults.topK == 40 && defaults.minP == 0.05)
    let bare = APIRequest(id: 7, kind: .completions, prompt: "p")
    let a = WorkerPool.submitRecord(for: bare, defaults: defaults, defaultMaxTokens: 256).sampling
    #expect(a.temperature == 0.8 && a.topP == 0.95 && a.topK == 40 && a.minP == 0.05 && a.maxTokens == 256 && a.seed == nil)
    defaults.temperature = 1; defaults.topP = 1; defaults.topK = 0; defaults.minP = 0   // OpenAI's
    let b = WorkerPool.submitRecord(for: bare, defaults: defaults, defaultMaxTokens: 16).sampling
    #expect(b.temperature == 1 && b.topP == 1 && b.topK == 0 && b.minP == 0 && b.maxTokens == 16)
    // Fields the request sets win, explicit "off" values included.
    var set = SamplingParams()
    set.temperature = 0; set.topP = 1; set.topK = 0; set.minP = 0; set.maxTokens = 5; set.seed = -1; set.stop = ["x"]
    let c = WorkerPool.submitRecord(for: APIRequest(id: 8, kind: .completions, prompt: "p", sampling: set),
                                    defaults: SamplingDefaults(), defaultMaxTokens: 256).sampling
    #expect(c.temperature == 0 && c.topP == 1 && c.topK == 0 && c.minP == 0 && c.maxTokens == 5)
    #expect(c.seed == UInt64(bitPattern: -1) && c.stop == ["x"])
}
