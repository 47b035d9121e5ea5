from kettle.cli.main import app

app(prog_name="kettle")
