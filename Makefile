# The two commands of the README's Quick start.
#   make app   - install what the app needs (in .venv) and start it: streamlit run app.py
#   make test  - install what the tests need (venv, pip, Debian's chromium) and run them, with a
#                coverage report of fer_app (pytest-cov; a report, not a gate)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: app test install install-dev browser

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -r requirements.txt

install-dev: $(PY)
	$(PY) -m pip install -q -r requirements-dev.txt

# Chromium for the real-browser test (Debian package; Playwright never downloads a browser here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

app: install
	$(PY) -m streamlit run app.py

test: install-dev browser
	$(PY) -m pytest -q --cov=fer_app --cov-report=term-missing:skip-covered
