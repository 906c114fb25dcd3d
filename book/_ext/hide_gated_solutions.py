"""Make ``hide_solutions`` also hide *gated* solutions (student edition).

sphinx-exercise hides ``{solution}`` directives when ``hide_solutions = True``, but
for the gated form used in notebooks::

    ```{solution-start} ex-label
    ```
    (markdown and code cells of the solution)
    ```{solution-end}
    ```

it only drops the opening directive: the cells in between would still be shown.
This extension replaces ``solution-start`` by a directive that, when solutions are
hidden, leaves a marker; a transform then removes everything from the marker up to
and including the matching ``solution-end``.

When solutions are hidden it also removes the *model-answer cells*: code cells that
assert that an exercise checker accepts a correct solution (``assert
checks.check_x(reference)``, see :func:`rlcore.grading.is_model_answer`); the student
notebooks of ``python -m rlcore.grading release`` leave out the same cells.
"""

from __future__ import annotations

from docutils import nodes
from sphinx.errors import ExtensionError
from sphinx.transforms import SphinxTransform
from sphinx.util import logging

from sphinx_exercise.directive import SolutionStartDirective
from sphinx_exercise.nodes import solution_end_node

logger = logging.getLogger(__name__)


class hidden_solution_start(nodes.Element):
    """Marker for a hidden gated solution (removed before writing)."""


class HidableSolutionStart(SolutionStartDirective):
    def run(self):
        result = super().run()  # keeps sphinx-exercise's gated bookkeeping
        if self.env.app.config.hide_solutions:
            marker = hidden_solution_start()
            self.set_source_info(marker)
            return [marker]
        return result


class RemoveHiddenGatedSolutions(SphinxTransform):
    # after CheckGatedDirectives (1), before MergeGatedSolutions (10)
    default_priority = 5

    def apply(self, **kwargs):
        for marker in list(self.document.findall(hidden_solution_start)):
            parent = marker.parent
            start = parent.index(marker)
            end = None
            for j in range(start + 1, len(parent.children)):
                if isinstance(parent.children[j], solution_end_node):
                    end = j
                    break
            if end is None:
                logger.warning(
                    "hide_gated_solutions: solution-start without a solution-end at the "
                    "same level; only the directive itself is hidden",
                    location=marker,
                )
                parent.remove(marker)
                continue
            for child in list(parent.children[start : end + 1]):
                parent.remove(child)


class RemoveModelAnswerCells(SphinxTransform):
    """Student edition: drop the code cells that hold a model answer (myst-nb cell containers)."""

    default_priority = 5

    def apply(self, **kwargs):
        if not self.config.hide_solutions:
            return
        try:
            from rlcore.grading import is_model_answer
        except ImportError as exc:  # the student edition must not silently keep the answers
            raise ExtensionError(f"hide_gated_solutions needs rlcore on the path: {exc}") from exc
        for cell in list(self.document.findall(nodes.container)):
            if cell.get("nb_element") != "cell_code" or cell.parent is None:
                continue
            source = "\n".join(
                block.astext()
                for part in cell.children
                if isinstance(part, nodes.container) and part.get("nb_element") == "cell_code_source"
                for block in part.findall(nodes.literal_block)
            )
            if source and is_model_answer(source):
                cell.parent.remove(cell)


def _skip(self, node):
    raise nodes.SkipNode


def setup(app):
    app.setup_extension("sphinx_exercise")
    app.add_node(hidden_solution_start, html=(_skip, None), latex=(_skip, None))
    app.add_directive("solution-start", HidableSolutionStart, override=True)
    app.add_transform(RemoveHiddenGatedSolutions)
    app.add_transform(RemoveModelAnswerCells)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
