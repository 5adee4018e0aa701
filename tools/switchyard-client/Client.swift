// switchyard-client: send a prompt to a Switchyard (or any OpenAI-compatible) server and stream the answer.
import ArgumentParser
import ClientKit
import Foundation

struct ConnectionOptions: ParsableArguments {
    @Option(name: .long, help: "Unix socket of the server.") var socket: String = "./switchyard.sock"
    @Option(name: .long, help: "http://HOST:PORT of a TCP server (instead of --socket).") var url: String?
    @Option(name: .long, help: "Session id (sent as X-Session-Id, session_id and user).") var session: String?
    @Option(name: .customLong("max-tokens"), help: "Most tokens to generate.") var maxTokens: Int = 256
    @Option(name: .long, help: "Sampling temperature.") var temperature: Double?
    @Option(name: .long, help: "System message.") var system: String?
    @Option(name: .long, help: "Model name sent in the request.") var model: String?
    @Option(name: .long, help: "Seconds without progress before giving up.") var timeout: Double = 300
    @Flag(name: .long, help: "Print the raw response (non-streamed JSON) instead of streaming text.") var json = false

    func validate() throws {
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be >= 1") }
        if let t = temperature, !(t >= 0 && t <= 100) { throw ValidationError("--temperature must be 0 ... 100") }
        guard timeout > 0 else { throw ValidationError("--timeout must be > 0") }
    }

    func endpoint() throws -> Endpoint {
        if let u = url { return try Endpoint.parse(url: u) }
        return .unix(path: socket)
    }

    /// Runs one turn; streams to stdout unless --json. Returns the assistant text.
    func turn(_ client: ChatClient, _ messages: [ChatMessage], session: String?) throws -> String {
        var req = ChatRequest(messages: messages, model: model, maxTokens: maxTokens, temperature: temperature,
                              sessionID: session, stream: !json)
        req.stream = !json
        let result = try client.complete(req) { piece in
            if !json { out(piece) }
        }
        out(json ? result.raw + "\n" : "\n")
        return result.text
    }
}

/// Writes to stdout unbuffered (streamed pieces, prompts and newlines must come out in order).
func out(_ s: String) { FileHandle.standardOutput.write(Data(s.utf8)) }

/// Prints a ClientError as one line and exits 1 (2 while the server is loading, 3 when overloaded).
func fail(_ e: Error) -> ExitCode {
    let msg = (e as? ClientError)?.description ?? "\(e)"
    FileHandle.standardError.write(Data("switchyard-client: \(msg)\n".utf8))
    if case .serverLoading = e as? ClientError { return ExitCode(2) }
    if case .overloaded = e as? ClientError { return ExitCode(3) }
    return ExitCode(1)
}

@main
struct SwitchyardClient: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard-client",
        abstract: "Talk to a Switchyard server over its Unix socket.",
        discussion: """
            switchyard-client "Why is the sky blue?"      stream one answer
            switchyard-client chat                         interactive multi-turn chat (/reset, Ctrl-D quits)
            """,
        subcommands: [Ask.self, Chat.self],
        defaultSubcommand: Ask.self
    )
}

struct Ask: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ask", abstract: "Send one prompt, stream the answer.")
    @OptionGroup var options: ConnectionOptions
    @Argument(help: "The prompt.") var prompt: String

    func run() throws {
        do {
            let client = ChatClient(endpoint: try options.endpoint(), timeout: options.timeout)
            var messages: [ChatMessage] = []
            if let s = options.system { messages.append(ChatMessage(role: "system", content: s)) }
            messages.append(ChatMessage(role: "user", content: prompt))
            _ = try options.turn(client, messages, session: options.session)
        } catch {
            throw fail(error)
        }
    }
}

struct Chat: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat", abstract: "Interactive multi-turn chat on one session (/reset clears history, Ctrl-D quits).")
    @OptionGroup var options: ConnectionOptions

    func run() throws {
        func freshSession() -> String { "chat-" + String(UInt64.random(in: 1...UInt64.max), radix: 16) }
        var session = options.session ?? freshSession()
        let client: ChatClient
        do { client = ChatClient(endpoint: try options.endpoint(), timeout: options.timeout) } catch { throw fail(error) }
        var history: [ChatMessage] = []
        func reset() {
            history = options.system.map { [ChatMessage(role: "system", content: $0)] } ?? []
        }
        reset()
        FileHandle.standardError.write(Data("session \(session); /reset clears the history, Ctrl-D quits\n".utf8))
        while true {
            out("> ")
            guard let line = readLine() else {
                out("\n")
                return
            }
            let text = line.trimmingCharacters(in: .whitespaces)
            if text.isEmpty { continue }
            if text == "/reset" {
                reset()
                // A new session id (unless --session pinned one), so the server starts from an empty cache.
                if options.session == nil { session = freshSession() }
                out("(history cleared; session \(session))\n")
                continue
            }
            history.append(ChatMessage(role: "user", content: text))
            do {
                let answer = try options.turn(client, history, session: session)
                history.append(ChatMessage(role: "assistant", content: answer))
            } catch {
                history.removeLast()
                let code = fail(error)
                // Keep the session going on transient errors; quit when there is no server at all.
                if case .noServer = error as? ClientError { throw code }
            }
        }
    }
}
