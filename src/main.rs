fn main() -> std::process::ExitCode {
    worker_recovery_operator::cli::main()
}
