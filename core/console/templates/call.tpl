% rebase('layout', c=c, title=title)
<p class="meta">Link to this call: <a href="{{link}}" class="mono">{{link}}</a></p>
% if row is not None:
<section class="card" aria-labelledby="summary">
<h2 id="summary">Summary</h2>
<dl class="pairs">
  <dt>Started</dt><dd><time datetime="{{h.iso(row.started_at)}}">{{h.when(row.started_at)}}</time></dd>
  <dt>Caller</dt><dd class="mono">{{row.caller or '-'}}</dd>
  <dt>Destination</dt><dd class="mono">{{row.destination or '-'}}</dd>
  <dt>Answer</dt><dd><span class="badge {{row.answer or 'pending'}}">{{row.answer or 'deciding'}}</span>{{' (the configured fallback)' if row.fallback else ''}}</dd>
  <dt>Why</dt><dd>rule <code>{{row.rule or '-'}}</code>{{', decided by ' + ', '.join(row.decided_by) if row.decided_by else ''}}</dd>
  % if row.capped_at is not None:
  <dt>Capped at</dt><dd><strong>{{h.seconds(row.capped_at)}}</strong>
  % if row.capped_by:
    by {{row.capped_by}}{{': ' + capping.decision.get('reason', '') if capping is not None and capping.decision else ''}}
  % elif row.decided_by:
    (the maxDuration of the action chosen, from {{', '.join(row.decided_by)}})
  % end
  </dd>
  % end
  <dt>Duration</dt><dd>{{h.seconds(row.duration)}}{{' (' + row.result + ')' if row.result else ''}}</dd>
  <dt>Time to decide</dt><dd>{{h.ms(row.elapsed_ms)}}</dd>
  % if row.duplicates:
  <dt>Redeliveries</dt><dd><span class="badge duplicate">{{row.duplicates}}</span></dd>
  % end
  % for label, text in tl.details.items():
  <dt>{{label}}</dt><dd>{{text}}</dd>
  % end
</dl>
</section>
% elif tl.details:
<section class="card"><dl class="pairs">
  % for label, text in tl.details.items():
  <dt>{{label}}</dt><dd>{{text}}</dd>
  % end
</dl></section>
% end

<h2>Timeline</h2>
<ol class="timeline">
% for cb in tl.callbacks:
<li class="{{'duplicate' if cb.duplicate else ''}}">
  <h3>{{cb.event.upper()}}{{' ' + cb.sub[:12] if cb.sub else ''}} <span class="meta">at <time datetime="{{h.iso(cb.received_at)}}">{{h.when(cb.received_at)}}</time></span>
    <span class="badge {{cb.state}}">{{cb.state}}</span>
    % if cb.duplicate:
    <span class="badge duplicate">delivered {{cb.redeliveries + 1}} times</span>
    % end
    % if cb.attempts > 1:
    <span class="badge retry">{{cb.attempts}} attempts</span>
    % end
  </h3>
  % if cb.last_error:
  <p class="error-text">Last error: {{cb.last_error}}</p>
  % end
  % if cb.answer is not None:
  <p><strong>Answer:</strong> <span class="badge {{cb.outcome or ''}}">{{cb.outcome or '-'}}</span></p>
  <details><summary>The SVAML sent</summary><pre class="json">{{pretty(cb.answer)}}</pre></details>
  % elif cb.event in ('dice', 'notify'):
  <p><strong>Answer:</strong> 200, empty body</p>
  % end
  % t = cb.trace
  % if t is not None:
  <p><strong>Trace:</strong> rule <code>{{t.rule or '-'}}</code>{{', decided by ' + ', '.join(t.decided_by) if t.decided_by else ''}}{{', capped by ' + t.capped_by if t.capped_by else ''}}, {{h.ms(t.elapsed_ms)}}{{', attempt %d' % t.attempt if t.attempt else ''}}</p>
  % if t.revision:
  <p class="meta">Configuration revision <a href="{{c.url('/revisions', show=t.revision)}}" class="mono">{{t.revision}}</a></p>
  % end
  % if t.plugins:
  <div class="scroll">
  <table class="trace">
  <caption class="sr">What each plugin did for the {{cb.event.upper()}}</caption>
  <thead><tr><th scope="col">Plugin</th><th scope="col">Status</th><th scope="col" class="num">Time</th><th scope="col">Decision or error</th></tr></thead>
  <tbody>
  % for p in t.plugins:
  <tr{{!' class="shadow"' if p.shadow else ''}}>
    <th scope="row">{{p.plugin}}
    % if p.shadow:
      <span class="badge shadow" title="run in shadow (plugins.shadow): traced, never merged">shadow</span>
    % end
    </th>
    <td><span class="badge {{p.status}}">{{p.status}}</span></td>
    <td class="num">{{h.ms(p.ms)}}</td>
    <td>
    % if p.decision is not None:
      <strong>{{p.decision.get('kind', '')}}</strong>{{': ' + p.decision['reason'] if p.decision.get('reason') else ''}}
      % if p.decision.get('max_duration') is not None:
      <br>cap {{p.decision['max_duration']}} s
      % end
      % if p.decision.get('action') or p.decision.get('default_action') or p.decision.get('instructions'):
      <details><summary>details</summary><pre class="json">{{pretty(p.decision)}}</pre></details>
      % end
    % end
    % if p.error:
      <span class="error-text">{{p.error}}</span>{{' (counted as ' + p.on_error + ')' if p.on_error else ''}}
    % end
    % if p.would_change:
      <br><strong>would have changed the answer</strong> to <code>{{p.would_answer.get('action', '?')}}</code>{{' (maxDuration %s s)' % p.would_answer['maxDuration'] if 'maxDuration' in p.would_answer else ''}}
    % elif p.would_change is not None:
      <br>would not have changed the answer
    % end
    </td>
  </tr>
  % end
  </tbody>
  </table>
  </div>
  % end
  % for conflict in t.conflicts:
  <p><span class="badge conflict">conflict</span> {{conflict.get('plugin')}} proposed <code>{{(conflict.get('proposed') or {}).get('name', '?')}}</code>, lost to {{conflict.get('lost_to')}}</p>
  % end
  % for note in t.notes:
  <p class="meta">Note: {{note}}</p>
  % end
  % end
</li>
% end
</ol>
