import Foundation
import Testing
import JSONSchema
@testable import Front

/// tools / tool_choice: a forced call (required or a named function) constrains the answer to
/// `{"name", "arguments"}` and describes the functions in the system message; the answer comes back as
/// `tool_calls`. auto and none answer in text.
@Suite("Tool calls")
struct ToolCallTests {
    static let tools = #"""
        "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"city":{"type":"string"},"unit":{"enum":["C","F"]}},"required":["city"],"additionalProperties":false}}},
                 {"type":"function","function":{"name":"get_time"}}]
        """#

    static func decode(_ body: String) throws(APIError) -> APIRequest {
        try APIDecoder.decodeGeneration(kind: .chatCompletions, body: Array(body.utf8), id: 3, sessionHeader: nil, peer: .unknown)
    }

    static func error(_ body: String) -> APIError? {
        do { _ = try decode(body); return nil } catch { return error }
    }

    @Test func aForcedCallConstrainsTheAnswerAndDescribesTheFunctions() throws {
        let r = try Self.decode(#"{"messages":[{"role":"user","content":"weather in Paris?"}],"# + Self.tools + #","tool_choice":"required"}"#)
        #expect(r.toolCall && r.sampling.jsonObject)
        let p = try SchemaProgram(decoding: r.sampling.jsonSchema)
        guard case .anyOf(let alts) = p.nodes[0], alts.count == 2 else { Issue.record("root \(p.nodes[0])"); return }
        for (alt, name) in zip(alts, ["get_weather", "get_time"]) {
            guard case .object(let props, 0b11, -1) = p.nodes[Int(alt)] else { Issue.record("\(p.nodes[Int(alt)])"); continue }
            #expect(props.map { String(decoding: $0.name, as: UTF8.self) } == ["name", "arguments"])
            #expect(p.nodes[Int(props[0].node)] == .literals([Array("\"\(name)\"".utf8)]))
        }
        // get_time has no parameters: its arguments are {}.
        guard case .object(let timeProps, _, _) = p.nodes[Int(alts[1])] else { return }
        #expect(p.nodes[Int(timeProps[1].node)] == .object(properties: [], required: 0, additional: -1))
        // The functions are described in a new system message, before the user's.
        #expect(r.messages.count == 2 && r.messages[0].role == .system)
        #expect(r.messages[0].content.contains(#"{"name":"get_weather","description":"Weather now","parameters":{"type":"object""#))
        #expect(r.messages[0].content.contains(#"{"name":"get_time","parameters":{"type":"object","properties":{}}}"#))
        let sub = WorkerPool.submitRecord(for: r, defaults: SamplingDefaults(), defaultMaxTokens: 8)
        #expect(sub.sampling.jsonSchema == r.sampling.jsonSchema && sub.messages.first?.role == "system")
        // Stop strings do not apply to a forced call (they could cut its JSON).
        #expect(try Self.decode(#"{"messages":[{"role":"user","content":"u"}],"stop":["}"],"# + Self.tools + #","tool_choice":"required"}"#).sampling.stop.isEmpty)

        // A named function: only that one; an existing system message gets the description appended.
        let n = try Self.decode(#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"u"}],"# + Self.tools
                                + #","tool_choice":{"type":"function","function":{"name":"get_time"}}}"#)
        #expect(n.toolCall && n.messages.count == 2 && n.messages[0].content.hasPrefix("Be brief.\n\nYou can call functions."))
        #expect(!n.messages[0].content.contains("get_weather"))
        #expect(try SchemaProgram(decoding: n.sampling.jsonSchema).nodes[0] != .any)
    }

    /// auto (also the default with tools): the functions are described, the answer is free, and the front
    /// looks for a call in it at the end. none: nothing changes.
    @Test func autoDescribesTheFunctionsAndNoneDoesNot() throws {
        for choice in ["", #","tool_choice":"auto""#, #","tool_choice":null"#] {
            let r = try Self.decode(#"{"messages":[{"role":"user","content":"u"}],"# + Self.tools + choice + #","parallel_tool_calls":false}"#)
            #expect(!r.toolCall && !r.sampling.jsonObject && r.sampling.jsonSchema.isEmpty, "\(choice)")
            #expect(r.autoToolNames == ["get_weather", "get_time"] && r.messages.count == 2, "\(choice)")
            #expect(r.messages[0].role == .system && r.messages[0].content.contains("otherwise answer normally"))
        }
        let none = try Self.decode(#"{"messages":[{"role":"user","content":"u"}],"# + Self.tools + #","tool_choice":"none"}"#)
        #expect(!none.toolCall && none.autoToolNames.isEmpty && none.messages.count == 1 && none.sampling.jsonSchema.isEmpty)
    }

    @Test func earlierCallsAndToolResultsAreShownToTheModel() throws {
        let r = try Self.decode(#"""
            {"messages":[{"role":"user","content":"weather?"},
              {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]},
              {"role":"tool","tool_call_id":"call_1","content":"18 C"}]}
            """#)
        #expect(r.messages.map(\.role) == [.user, .assistant, .tool])
        #expect(r.messages[1].content == #"{"name":"get_weather","arguments":{"city":"Paris"}}"#)
        #expect(r.messages[2].content == "18 C")
    }

    @Test func badToolsAreRefused() {
        let u = #"{"messages":[{"role":"user","content":"u"}],"#
        let cases: [(String, String, String)] = [
            (u + #""tool_choice":"required"}"#, "tool_choice", "only allowed"),
            (u + Self.tools + #","tool_choice":{"type":"function","function":{"name":"nope"}}}"#, "tool_choice", "not in 'tools'"),
            (u + Self.tools + #","tool_choice":"sometimes"}"#, "tool_choice", "must be"),
            (u + #""tools":[{"type":"function","function":{"name":"a b"}}],"tool_choice":"required"}"#, "tools[0].function.name", "letters"),
            (u + #""tools":[{"type":"function","function":{"name":"f"}},{"type":"function","function":{"name":"f"}}]}"#, "tools[1].function.name", "twice"),
            (u + #""tools":[{"type":"retrieval"}]}"#, "tools[0]", "function"),
            (u + #""tools":[{"type":"function","function":{"name":"f","parameters":"x"}}]}"#, "tools[0].function.parameters", "JSON Schema"),
            (u + #""tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"string","pattern":"x"}}}}}],"tool_choice":"required"}"#,
             "tools", "pattern"),
            (u + #""tools":[{"type":"function","function":{"name":"f","parameters":{"type":"array"}}}],"tool_choice":"required"}"#, "tools", "object"),
            (u + #""tools":[],"tool_choice":"required"}"#, "tools", "empty"),
            (u + Self.tools + #","tool_choice":"required","response_format":{"type":"json_object"}}"#, "response_format", "forced tool call"),
            (u + Self.tools + #","response_format":{"type":"json_object"}}"#, "tool_choice", "cannot be combined"),
            ("{\"messages\":[" + Array(repeating: #"{"role":"user","content":"x"}"#, count: 4096).joined(separator: ",") + "]," + Self.tools + "}",
             "messages", "4095"),
        ]
        for (body, param, needle) in cases {
            let e = Self.error(body)
            #expect(e?.status == 400 && e?.param == param && (e?.message.contains(needle) ?? false), "\(body): \(String(describing: e))")
        }
    }

    @Test func theAnswerBecomesToolCalls() throws {
        // The arguments pass through as written (digits kept; a forced call's duplicate key is the client's
        // JSON parser's business, as the model wrote it).
        var call = try #require(ToolCall.parse(#"{"arguments": {"city": "Paris", "n": 123456789012345678901234, "s": "\"}{"}, "name": "get_weather"}"#))
        #expect(call.name == "get_weather" && call.arguments == #"{"city": "Paris", "n": 123456789012345678901234, "s": "\"}{"}"#)
        #expect(call.id.hasPrefix("call_") && call.id.count == 29 && ToolCall.parse(#"{"name":"f","arguments":{}}"#)?.id != call.id)
        #expect(ToolCall.parse(#"{"name":"f","arguments":{"x":1,"x":2}}"#)?.arguments == #"{"x":1,"x":2}"#)
        #expect(ToolCall.parse(#"{"name": "get_weather", "arguments": {"city": "Par"#) == nil)
        // tool_choice auto: only a call of one of the functions, nothing else in the answer, arguments that parse.
        #expect(ToolCall.parse(" \n{\"name\":\"get_time\",\"arguments\":{}}\n", names: ["get_time"])?.name == "get_time")
        #expect(ToolCall.parse(#"{"name":"other","arguments":{}}"#, names: ["get_time"]) == nil)
        #expect(ToolCall.parse(#"{"name":"get_time","arguments":{},"x":1}"#, names: ["get_time"]) == nil)
        #expect(ToolCall.parse(#"{"name":"get_time","arguments":"{}"}"#, names: ["get_time"]) == nil)
        #expect(ToolCall.parse(#"{"name":"get_time","arguments":{"a":}}"#, names: ["get_time"]) == nil)
        #expect(ToolCall.parse(#"{"name":"get_time","name":"get_time","arguments":{}}"#, names: ["get_time"]) == nil)
        #expect(ToolCall.parse(#"The answer is {"name":"get_time","arguments":{}}"#, names: ["get_time"]) == nil)
        call = ToolCall(id: "call_9", name: "get_weather", arguments: #"{"city":"Paris","unit":"C"}"#)
        let ident = CompletionIdentity(number: 9, created: 1, model: "m", chat: true)
        var w = JSONWriter()
        OpenAIEncoder.completion(ident, text: "ignored", finish: .toolCalls, usage: Usage(promptTokens: 1, completionTokens: 2, cachedTokens: 0),
                                 toolCall: call, into: &w)
        let o = try #require(try JSONSerialization.jsonObject(with: Data(w.bytes)) as? [String: Any])
        let c0 = try #require((o["choices"] as? [[String: Any]])?.first)
        #expect(c0["finish_reason"] as? String == "tool_calls")
        let msg = try #require(c0["message"] as? [String: Any])
        #expect(msg["content"] is NSNull)
        let tc = try #require((msg["tool_calls"] as? [[String: Any]])?.first)
        #expect(tc["id"] as? String == "call_9" && tc["type"] as? String == "function")
        #expect((tc["function"] as? [String: Any])?["arguments"] as? String == #"{"city":"Paris","unit":"C"}"#)
        var chunk = JSONWriter()
        OpenAIEncoder.toolCallChunk(ident, call, nullUsage: false, into: &chunk)
        let text = String(decoding: chunk.bytes, as: UTF8.self)
        #expect(text.hasPrefix("data: {") && text.hasSuffix("}\n\n"))
        let co = try #require(try JSONSerialization.jsonObject(with: Data(text.dropFirst(6).utf8)) as? [String: Any])
        let delta = try #require(((co["choices"] as? [[String: Any]])?.first?["delta"]) as? [String: Any])
        let dc = try #require((delta["tool_calls"] as? [[String: Any]])?.first)
        #expect(dc["index"] as? Int == 0 && (dc["function"] as? [String: Any])?["name"] as? String == "get_weather")
    }
}
