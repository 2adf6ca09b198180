% rebase('layout', c=c, title=title)
<p>Try a candidate configuration on the recorded calls before it goes live: its plugins answer every recorded ICE, ACE and PIE of the calls chosen, in the order they arrived, in a sandbox (a scratch copy of the plugins' tables; nothing of the running store changes and nothing is sent), and each answer is compared with the one recorded. The running configuration is revision <a href="{{c.url('/revisions', show=running)}}" class="mono">{{running}}</a>.</p>
<form method="post" action="{{c.base}}/replay" class="filters card" aria-label="Replay a candidate configuration">
  <input type="hidden" name="_csrf" value="{{c.csrf}}">
  <p class="whole"><label for="r-config">Candidate configuration (TOML)</label>
     <span class="hint" id="r-config-hint">The whole configuration file, as it would go live. Without a <code>[sinch]</code> section the running configuration's is used, so the application secret need not be pasted. What you paste is not kept or shown again.</span>
     <textarea id="r-config" name="config" rows="16" spellcheck="false" autocomplete="off" aria-describedby="r-config-hint" required></textarea></p>
  <p><label for="r-since">Calls from (UTC)</label>
     <input id="r-since" name="since" type="datetime-local" value="{{shown['since']}}"></p>
  <p><label for="r-until">Until (UTC)</label>
     <input id="r-until" name="until" type="datetime-local" value="{{shown['until']}}"></p>
  <p><label for="r-callid">Only the call</label>
     <input id="r-callid" name="callid" type="text" value="{{shown['callid']}}" autocomplete="off"></p>
  <p><label for="r-limit">At most (the oldest calls)</label>
     <input id="r-limit" name="limit" type="number" min="1" max="{{max_limit}}" value="{{shown['limit']}}"></p>
  <p class="actions"><button type="submit">Replay</button></p>
</form>
% for problem in problems:
<p class="flash error" role="alert">{{problem}}</p>
% end
% if error:
<p class="flash error" role="alert" id="replay-error">{{error}}</p>
% end
% if report is not None:
<section class="card" aria-labelledby="replay-result" id="replay-report">
<h2 id="replay-result">What the candidate would have answered</h2>
<dl class="pairs">
  <dt>Candidate revision</dt><dd class="mono">{{report.candidate}}{{' (the running configuration)' if report.candidate == running else ''}}</dd>
  <dt>Recorded answers from</dt><dd>
  % if report.recorded_revisions:
    % for i, rev in enumerate(report.recorded_revisions):
    {{', ' if i else ''}}<a href="{{c.url('/revisions', show=rev)}}" class="mono">{{rev}}</a>
    % end
  % else:
    unknown revision
  % end
  </dd>
  <dt>Window</dt><dd>{{h.when(report.since) if report.since is not None else 'the first call'}} to {{h.when(report.until) if report.until is not None else 'now'}}</dd>
</dl>
<ul class="figures">
  <li><span class="figure">{{report.calls}}</span> <span class="label">calls</span></li>
  <li><span class="figure">{{report.replayed}}</span> <span class="label">callbacks replayed</span></li>
  <li><span class="figure">{{len(report.results)}}</span> <span class="label">answers compared</span></li>
  <li><span class="figure" id="changed-count">{{len(report.changed)}}</span> <span class="label">would change</span></li>
</ul>
% if report.rewound:
<p class="meta">State put back to the window's start: {{', '.join(report.rewound)}}.</p>
% end
% if report.without_body:
<p class="meta">{{report.without_body}} callback(s) had no recorded body: not replayed.</p>
% end
<h3>Summary</h3>
% if report.groups:
<ul class="changes" id="replay-groups">
  % for g in report.groups:
  <li>{{g.text}}</li>
  % end
</ul>
% else:
<p class="empty">No answer would change.</p>
% end
</section>
% if changed:
<h2>Changed answers</h2>
% if len(changed) < len(report.changed):
<p class="meta">The first {{len(changed)}} of {{len(report.changed)}}; <code>switchboard replay --json</code> lists them all.</p>
% end
<div class="scroll">
<table class="stack" id="replay-changed">
<caption class="sr">Answers the candidate would change, oldest first</caption>
<thead><tr>
  <th scope="col">Time (UTC)</th><th scope="col">Call</th><th scope="col">Event</th><th scope="col">Caller</th><th scope="col">Destination</th>
  <th scope="col">Recorded</th><th scope="col">Candidate</th><th scope="col">Because of</th>
</tr></thead>
<tbody>
% for r in changed:
<tr>
  <td data-label="Time"><time datetime="{{h.iso(r.at)}}">{{h.when(r.at)}}</time></td>
  <td data-label="Call"><a href="{{c.url(h.call_path(r.callid))}}" class="mono">{{r.callid}}</a></td>
  <td data-label="Event">{{r.event.upper()}}</td>
  <td data-label="Caller" class="mono">{{r.caller or '-'}}</td>
  <td data-label="Destination" class="mono">{{r.destination or '-'}}</td>
  <td data-label="Recorded">{{describe(r.recorded)}} <span class="meta">(revision <span class="mono">{{r.revision or '?'}}</span>)</span></td>
  <td data-label="Candidate"><strong>{{describe(r.candidate)}}</strong></td>
  <td data-label="Because of">{{r.plugin or 'the core'}}{{': ' + r.rule if r.rule else ''}}</td>
</tr>
% end
</tbody>
</table>
</div>
% end
<h2>Limits of a replay</h2>
<ul class="changes">
% for line in report.limits():
  <li>{{line}}</li>
% end
</ul>
% end
