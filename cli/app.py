import typer

app = typer.Typer()


@app.command()
def info() -> None:
    print("ok")


def main() -> None:
    app()
