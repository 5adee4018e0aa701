import ArgumentParser

@main
struct Switchyard: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard",
        abstract: "Shared-memory multi-process LLM inference server.",
        subcommands: [
            ServeCommand.self,
            WorkerCommand.self,
            GenerateCommand.self,
            TokenizeCommand.self,
            RingPeerCommand.self,
        ]
    )
}
