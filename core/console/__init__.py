"""The operator console: recent calls, one call's timeline and traces, plugins, the
inbox of DiCE work, and the pages plugins add, in a browser.

Off unless ``admin.console`` names an address: it is served by a waitress server of its
own (``core.console.server``), never on the callback listener, started and stopped with
the server. One job per module:

* ``page``: what a plugin's page is (``ConsolePage``, ``ConsoleRequest``): part of the
  plugin contract, re-exported by ``core``;
* ``auth``: passwords (scrypt), sessions, CSRF tokens, the login throttle;
* ``audit``: the audit log of every change made from the console (its table and rows);
* ``health``: the figures of the runtime itself: plugin errors, breakers, configuration;
* ``html``: escaping, links, times, the small pieces every page uses;
* ``views``: the pages, rendered from ``templates/`` with bottle's SimpleTemplate;
* ``app``: the bottle app: login, sessions, CSRF, routes, plugin pages and actions;
* ``server``: the listener, in a thread of its own;
* ``cli``: ``switchboard console hash-password``.

This package's ``__init__`` imports nothing, so that the contract can import
``core.console.page`` without loading the console.
"""
