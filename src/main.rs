fn main() -> std::process::ExitCode {
    betcycle::cli::main()
}
