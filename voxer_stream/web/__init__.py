"""The web client: static files (``index.html``, ``app.js``, ``style.css``, ``icon.svg``)
served as they are by ``voxer-stream serve`` at ``/`` and ``/app/`` (no build step).

A package only so that the files ship as package data and are found with
``importlib.resources``; it has no Python code.
"""
