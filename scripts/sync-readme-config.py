"""Copy myrmex.example.toml into README.md's configuration block (a test checks they match)."""
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent
example = (root / "myrmex.example.toml").read_text().strip()
readme = (root / "README.md").read_text()
start = readme.index("```toml\n# myrmex.toml") + len("```toml\n")
end = readme.index("\n```", start)
(root / "README.md").write_text(readme[:start] + example + readme[end:])
