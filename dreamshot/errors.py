"""One error type for bad user input, carrying the input's name and the fix.

Nodes catch it and prefix their own display name, so a user reads
"Shot Sequence Pack: input 'width': 500 is not a multiple of 16. Fix: use 496 or 512."
"""


class DreamShotInputError(ValueError):
    """Bad input from a user or a file, with the input it concerns and how to fix it."""

    def __init__(self, input_name: str, problem: str, fix: str, node: str | None = None):
        self.input_name = input_name
        self.problem = problem
        self.fix = fix
        self.node = node
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.node}: " if self.node else ""
        return f"{where}input '{self.input_name}': {self.problem} Fix: {self.fix}"

    def for_node(self, node: str) -> "DreamShotInputError":
        """The same error, naming the node the user sees."""
        return DreamShotInputError(self.input_name, self.problem, self.fix, node=node)
