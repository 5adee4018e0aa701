// ChatML prompt rendering without a Jinja engine.
//
// SmolLM2's tokenizer.chat_template (GGUF metadata) is:
//   {% for message in messages %}
//     {% if loop.first and messages[0]['role'] != 'system' %}
//       {{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}
//     {% endif %}
//     {{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}
//   {% endfor %}
//   {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
// i.e. `<|im_start|>{role}\n{content}<|im_end|>\n` per message, a default system message when the first
// message is not a system message, and `<|im_start|>assistant\n` as the generation prompt.
//
// ChatTemplate recognises ChatML templates by their structure (markers, a loop over messages that
// prints role and content, a generation prompt) and reads the default system prompt out of the
// template's string literal. Templates it cannot render faithfully get ChatTemplateError instead of
// a plausible but wrong prompt: anything without the ChatML markers, and ChatML variants with
// reasoning switches or tool-call formatting (whose output for a message depends on logic we do not run).
//
// renderWithContentRanges also reports the byte ranges of the message contents in the prompt, so the
// worker can tokenize special-token text inside contents (a user typing "<|im_end|>") as plain text while
// the template's own markers stay control tokens (OpenAI's behaviour; llama-server parses both).

public struct ChatMessage: Sendable, Equatable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

public enum ChatTemplateError: Error, Equatable, CustomStringConvertible {
    /// The template is not one of the ChatML forms this renderer supports.
    case unsupportedTemplate(reason: String)
    case invalidRole(role: String, index: Int)
    /// A valid role that this template formats in a way this renderer does not reproduce.
    case unsupportedRoleForTemplate(role: String, index: Int)
    case noMessages

    public var description: String {
        switch self {
        case .unsupportedTemplate(let r): return "unsupported chat template: \(r)"
        case .invalidRole(let role, let i):
            return "message \(i) has role '\(role)'; allowed roles: \(ChatTemplate.allowedRoles.joined(separator: ", "))"
        case .unsupportedRoleForTemplate(let role, let i):
            return "message \(i): role '\(role)' has template-specific formatting that is not supported"
        case .noMessages: return "a chat needs at least one message"
        }
    }
}

public struct ChatTemplate: Sendable, Equatable {
    public static let allowedRoles = ["system", "user", "assistant", "tool"]

    /// System prompt inserted when the first message is not a system message (nil: none).
    public let defaultSystemPrompt: String?
    /// Whether the template trims message content (`message['content'] | trim`).
    public let trimsContent: Bool
    /// Whether the template has its own formatting for tool messages (then role "tool" is refused).
    public let formatsToolMessages: Bool

    /// - template: the `tokenizer.chat_template` text; nil means plain ChatML with no default system
    ///   prompt (llama.cpp's fallback when a model has no template).
    public init(template: String?) throws {
        guard let t = template else {
            defaultSystemPrompt = nil
            trimsContent = false
            formatsToolMessages = false
            return
        }
        let literals = Self.stringLiterals(t)
        let joined = literals.joined()
        func require(_ ok: Bool, _ reason: String) throws {
            if !ok { throw ChatTemplateError.unsupportedTemplate(reason: reason) }
        }
        try require(!t.isEmpty, "the template is empty")
        try require(joined.contains("<|im_start|>") && joined.contains("<|im_end|>"),
                    "not ChatML (no <|im_start|> / <|im_end|> markers)")
        try require(Self.containsAny(t, ["for message in messages", "for message in loop_messages"]),
                    "ChatML markers but no loop over the messages")
        try require(Self.containsAny(t, ["message['role']", "message[\"role\"]", "message.role"])
                    && Self.containsAny(t, ["message['content']", "message[\"content\"]", "message.content"]),
                    "the message loop does not print role and content")
        try require(t.contains("add_generation_prompt") && joined.contains("<|im_start|>assistant\n"),
                    "no `<|im_start|>assistant\\n` generation prompt")
        for feature in ["enable_thinking", "reasoning_content", "/no_think", "/think"] {
            try require(!t.contains(feature), "ChatML variant with '\(feature)' (reasoning) logic is not supported")
        }
        // Tool-aware ChatML templates (e.g. Qwen2.5) print plain messages the standard way but wrap
        // tool results differently: keep them, and refuse the "tool" role for them.
        formatsToolMessages = t.contains("tool")

        // Default system prompt: a literal "<|im_start|>system\n...<|im_end|>" in a branch taken when the
        // first message is not a system message.
        var defaultSystem: String? = nil
        let open = "<|im_start|>system\n"
        let openBytes = Array(open.utf8), endBytes = Array("<|im_end|>".utf8)
        for lit in literals {
            let u = Array(lit.utf8)
            guard let a = Self.find(openBytes, in: u, from: 0),
                  let b = Self.find(endBytes, in: u, from: a + openBytes.count) else { continue }
            defaultSystem = String(decoding: u[(a + openBytes.count)..<b], as: UTF8.self)
            break
        }
        if defaultSystem != nil {
            let compact = String(t.filter { !$0.isWhitespace }.map { $0 == "\"" ? "'" : $0 })
            try require(compact.contains("messages[0]['role']!='system'") || compact.contains("messages[0]['role']=='system'"),
                        "a fixed system prompt that does not depend on the first message's role")
        }
        defaultSystemPrompt = defaultSystem
        let compact = t.filter { !$0.isWhitespace }
        trimsContent = compact.contains("content']|trim") || compact.contains("content\"]|trim")
            || compact.contains("content|trim") || compact.contains("content'].strip()")
    }

    /// The prompt for `messages`, ending with `<|im_start|>assistant\n` when addGenerationPrompt.
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool) throws -> String {
        try renderWithContentRanges(messages, addGenerationPrompt: addGenerationPrompt).text
    }

    /// The prompt of `render`, and where each message's content lies in it: `contentRanges[i]` is the
    /// UTF-8 byte range (offsets into `text.utf8`) of message i's content as rendered (trimmed when the
    /// template trims). The ranges are recorded while the prompt is built, so they cannot be confused by
    /// content that looks like the template's own markers. Tokenizing with
    /// `Tokenizer.encode(text, parseSpecial: true, plainTextRanges: contentRanges)` keeps the template's
    /// markers special while special-token text inside the contents stays plain text.
    public func renderWithContentRanges(_ messages: [ChatMessage], addGenerationPrompt: Bool) throws
        -> (text: String, contentRanges: [Range<Int>]) {
        guard let first = messages.first else { throw ChatTemplateError.noMessages }
        for (i, m) in messages.enumerated() where !Self.allowedRoles.contains(m.role) {
            throw ChatTemplateError.invalidRole(role: m.role, index: i)
        }
        if formatsToolMessages, let i = messages.firstIndex(where: { $0.role == "tool" }) {
            throw ChatTemplateError.unsupportedRoleForTemplate(role: "tool", index: i)
        }
        var s = ""
        var ranges: [Range<Int>] = []
        ranges.reserveCapacity(messages.count)
        if let d = defaultSystemPrompt, first.role != "system" {
            s += "<|im_start|>system\n" + d + "<|im_end|>\n"
        }
        for m in messages {
            let content = trimsContent ? Self.trim(m.content) : m.content
            s += "<|im_start|>" + m.role + "\n"
            let start = s.utf8.count
            s += content
            ranges.append(start ..< s.utf8.count)
            s += "<|im_end|>\n"
        }
        if addGenerationPrompt { s += "<|im_start|>assistant\n" }
        return (s, ranges)
    }

    /// Index of the first occurrence of `needle` in `hay` at or after `from`.
    static func find(_ needle: [UInt8], in hay: [UInt8], from: Int) -> Int? {
        guard !needle.isEmpty, hay.count >= needle.count, from <= hay.count - needle.count else { return nil }
        var i = from
        while i + needle.count <= hay.count {
            if hay[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }

    static func containsAny(_ s: String, _ needles: [String]) -> Bool { needles.contains { s.contains($0) } }

    /// Jinja's `trim` (Python str.strip(): leading/trailing whitespace).
    static func trim(_ s: String) -> String {
        let u = s.unicodeScalars
        guard let a = u.firstIndex(where: { !$0.properties.isWhitespace }),
              let b = u.lastIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        return String(u[a...b])
    }

    /// The string literals inside the template's `{{ }}` / `{% %}` tags, with Jinja escapes resolved
    /// (\n, \t, \r, \\, \', \"), in order of appearance.
    static func stringLiterals(_ t: String) -> [String] {
        var out: [String] = []
        let s = Array(t.unicodeScalars)
        var i = 0
        var inTag = false
        while i < s.count {
            let c = s[i]
            if !inTag {
                if c == "{" && i + 1 < s.count && (s[i + 1] == "{" || s[i + 1] == "%") { inTag = true; i += 2; continue }
                i += 1; continue
            }
            if (c == "}" || c == "%") && i + 1 < s.count && s[i + 1] == "}" { inTag = false; i += 2; continue }
            if c == "'" || c == "\"" {
                var lit = String.UnicodeScalarView()
                var j = i + 1
                while j < s.count && s[j] != c {
                    if s[j] == "\\" && j + 1 < s.count {
                        switch s[j + 1] {
                        case "n": lit.append("\n")
                        case "t": lit.append("\t")
                        case "r": lit.append("\r")
                        default: lit.append(s[j + 1])
                        }
                        j += 2
                    } else {
                        lit.append(s[j]); j += 1
                    }
                }
                out.append(String(lit))
                i = j + 1
                continue
            }
            i += 1
        }
        return out
    }
}
