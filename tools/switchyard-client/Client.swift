import ArgumentParser

@main
struct SwitchyardClient: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard-client",
        abstract: "Talk to a Switchyard server over its Unix socket."
    )
}
