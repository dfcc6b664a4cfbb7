from mailer.cli import main

main(prog_name="mailer")
