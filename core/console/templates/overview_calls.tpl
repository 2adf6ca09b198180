<nav class="actions" aria-label="Time window">
  <span>Last</span>
% for n in windows:
  % if n == hours:
  <a href="{{c.url('/', hours=n)}}" aria-current="true"><strong>{{n}} h</strong></a>
  % else:
  <a href="{{c.url('/', hours=n)}}">{{n}} h</a>
  % end
% end
  <span class="meta">{{h.when(ov.since)}} to {{h.when(ov.until)}}</span>
</nav>

<section aria-labelledby="calls-figures">
<h2 id="calls-figures">Calls</h2>
<ul class="figures">
  <li><a href="{{c.url('/calls', **window)}}"><span class="figure">{{ov.calls}}</span><span class="label">calls</span></a></li>
  <li><a href="{{c.url('/calls', **window)}}"><span class="figure">{{h.ms(ov.latency_p50_ms)}}</span><span class="label">answer time p50</span></a></li>
  <li><a href="{{c.url('/calls', **window)}}"><span class="figure">{{h.ms(ov.latency_p99_ms)}}</span><span class="label">answer time p99</span></a></li>
  <li><a href="{{c.url('/calls', duplicates=1, **window)}}"><span class="figure">{{ov.duplicates}}</span><span class="label">redelivered callbacks</span></a></li>
  <li><a href="{{c.url('/inbox')}}"><span class="figure">{{ov.waiting_retry}}</span><span class="label">DiCE/Notify waiting for a retry</span></a></li>
  <li><a href="{{c.url('/inbox')}}"><span class="figure">{{ov.parked}}</span><span class="label">parked for an operator</span></a></li>
</ul>
{{!chart}}
<details>
  <summary>Calls per minute as a table</summary>
  <div class="scroll"><table>
  <thead><tr><th scope="col">Minute (UTC)</th><th scope="col" class="num">Calls</th></tr></thead>
  <tbody>
  % busy = [(m, n) for m, n in ov.per_minute if n]
  % for minute, n in busy:
  <tr><td><a href="{{c.url('/calls', since=h.form_time(minute), until=h.form_time(minute + 60))}}">{{h.when(minute)}}</a></td><td class="num">{{n}}</td></tr>
  % end
  % if not busy:
  <tr><td colspan="2">No calls in this window.</td></tr>
  % end
  </tbody></table></div>
</details>
</section>

<div class="grid">
<section class="card" aria-labelledby="outcomes">
  <h2 id="outcomes">Answers</h2>
  <ul class="plain">
  % for outcome, n in sorted(ov.outcomes.items(), key=lambda kv: -kv[1]):
    <li><a href="{{c.url('/calls', outcome=outcome if outcome != '(pending)' else None, **window)}}">{{n}} × {{outcome}}</a></li>
  % end
  % if not ov.outcomes:
    <li class="empty">No calls.</li>
  % end
  </ul>
</section>
<section class="card" aria-labelledby="denials">
  <h2 id="denials">Denials by plugin and rule</h2>
  <ul class="plain">
  % for (plugin, kind), n in sorted(ov.denials.items(), key=lambda kv: -kv[1]):
    % rule = 'cap-unenforceable' if kind == 'cap-unenforceable' else 'deny'
    <li><a href="{{c.url('/calls', plugin=plugin, rule=rule, **window)}}">{{n}} × {{plugin}}: {{kind if kind in ('deny', 'cap-unenforceable') else 'deny (on_error after ' + kind + ')'}}</a></li>
  % end
  % if not ov.denials:
    <li class="empty">No call denied.</li>
  % end
  </ul>
</section>
<section class="card" aria-labelledby="fallbacks">
  <h2 id="fallbacks">Fallbacks sent</h2>
  <p class="meta">The configured fallback instead of the plugins' answer; <code>budget</code>: past the time budget.</p>
  <ul class="plain">
  % for rule, n in sorted(ov.fallbacks.items(), key=lambda kv: -kv[1]):
    <li><a href="{{c.url('/calls', fallbacks=1, rule=rule, **window)}}">{{n}} × {{rule}}</a></li>
  % end
  % if not ov.fallbacks:
    <li class="empty">None.</li>
  % end
  </ul>
</section>
<section class="card" aria-labelledby="failures">
  <h2 id="failures">Plugin failures</h2>
  <p class="meta">Callbacks where a plugin raised, timed out or was skipped.</p>
  <ul class="plain">
  % for (plugin, status), n in sorted(ov.plugin_failures.items(), key=lambda kv: -kv[1]):
    <li><a href="{{c.url('/plugins')}}#plugin-{{plugin}}">{{n}} × {{plugin}}: {{status}}</a></li>
  % end
  % if not ov.plugin_failures:
    <li class="empty">None.</li>
  % end
  </ul>
</section>
</div>
