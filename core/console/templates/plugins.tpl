% rebase('layout', c=c, title=title)
<p>The enabled plugins, in precedence order (the order of <code>plugins.enabled</code>): the first one's proposal wins a conflict; then the plugins in shadow (<code>plugins.shadow</code>): run on every ICE, ACE and PIE and traced, never merged into the answer, their writes to the store rolled back. Settings marked secret are shown as <code>&lt;redacted&gt;</code>.</p>
% for problem in problems:
<p class="flash error" role="alert">Console pages not shown: {{problem}}</p>
% end
% if not rows:
<p class="empty">No plugin is enabled.</p>
% end
% for p in rows:
<section class="card plugin" aria-labelledby="plugin-{{p.name}}">
  <h2 id="plugin-{{p.name}}">
  % if p.precedence is None:
    <span class="badge shadow">shadow</span>
  % else:
    <span class="rank">{{p.precedence}}.</span>
  % end
    {{p.name}} <span class="version">{{p.version or ''}}</span>
  % if p.health.healthy:
    <span class="badge ok">healthy</span>
  % else:
    <span class="badge error">problems</span>
  % end
  </h2>
  <p class="meta">{{'built-in' if p.builtin else 'third-party'}}, from {{p.origin}}</p>
  <p><strong>Hooks:</strong> {{', '.join(p.hooks) or 'none'}}</p>
  % if p.pages:
  <p><strong>Console pages:</strong>
  % for m in p.pages:
    <a href="{{c.base}}{{m.path}}">{{m.page.title}}</a>
  % end
  </p>
  % end
  % if p.health.problems or p.health.breaker_trips or p.health.breaker_open_for is not None:
  <p><strong>Since the configuration was loaded:</strong>
    % for kind, n in sorted(p.health.problems.items()):
    {{n}} × {{kind}};
    % end
    % if p.health.breaker_trips:
    circuit breaker opened {{p.health.breaker_trips}} time(s);
    % end
    % if p.health.breaker_open_for is not None:
    <strong>breaker open</strong> for {{'%.0f' % p.health.breaker_open_for}} s more.
    % end
  </p>
  % end
  <details>
    <summary>Settings ({{len(p.settings)}})</summary>
    <div class="scroll">
    <table class="settings">
    <thead><tr><th scope="col">Key</th><th scope="col">Value</th><th scope="col">From</th></tr></thead>
    <tbody>
    % for key, value, source in p.settings:
    <tr><th scope="row"><code>{{key}}</code></th><td><code>{{value}}</code></td><td>{{source}}</td></tr>
    % end
    </tbody>
    </table>
    </div>
  </details>
</section>
% end
% if others:
<h2>Installed, not enabled</h2>
<ul>
% for info in others:
<li>{{info.name}} {{info.version or ''}} ({{'built-in' if info.builtin else 'third-party'}}){{': ' + info.error if info.error else ''}}</li>
% end
</ul>
% end
<details>
<summary>The core's settings</summary>
<div class="scroll">
<table class="settings">
<tbody>
% for section, values in core:
<tr><th scope="row"><code>{{section}}</code></th><td><code>{{values}}</code></td></tr>
% end
</tbody>
</table>
</div>
</details>
