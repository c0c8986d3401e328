fn main() {
    std::process::exit(tern::cli::main());
}
