from registry.interfaces.cli.main import main

main(prog_name="registry")
