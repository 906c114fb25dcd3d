# Convenience targets; each one calls a script in scripts/.
.PHONY: setup book book-quick test lab clean

setup:
	bash scripts/setup.sh

book:
	bash scripts/book.sh

book-quick:
	RLCORE_QUICK=1 bash scripts/book.sh

test:
	bash scripts/test.sh

lab: setup
	.venv/bin/jupyter lab chapters/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

clean:
	rm -rf book/_build book/chapters
