from labelloop.cli import app

app()
