import ArgumentParser
import Foundation
import Logging

@main
enum Main {
    static func main() async {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .trace
            return handler
        }
        do {
            var command = try Tenure.parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            // Usage errors exit 2 (ArgumentParser's own code is 64); help and --version exit 0.
            let code = Tenure.exitCode(for: error)
            if code == .success {
                Tenure.exit(withError: error)
            }
            FileHandle.standardError.write(Data((Tenure.fullMessage(for: error) + "\n").utf8))
            exit(code == .validationFailure ? ExitStatus.invalidInput.rawValue : code.rawValue)
        }
    }
}
