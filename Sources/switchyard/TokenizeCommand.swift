import ArgumentParser
import Engine
import Foundation

/// `switchyard tokenize`: token ids of a text as a JSON array.
struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tokenize", abstract: "Print the token ids of TEXT as a JSON array.")

    @Option(help: "GGUF model path.") var model: String = defaultModelPath
    @Flag(name: .customLong("no-special"), help: "Treat special-token text (<|im_start|>) as plain text.") var noSpecial = false
    @Argument(help: "Text to tokenize.") var text: String

    func run() throws {
        try requireModel(model)
        let gguf = try GGUFFile(path: model)
        let tokenizer = try Tokenizer(config: TokenizerConfig(gguf: gguf))
        let ids = tokenizer.encode(text, parseSpecial: !noSpecial)
        print("[" + ids.map(String.init).joined(separator: ",") + "]")
    }
}
