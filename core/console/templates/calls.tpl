% rebase('layout', c=c, title=title)
<form method="get" action="{{c.base}}/calls" class="filters card" role="search" aria-label="Filter the calls">
  <p><label for="f-number">Caller or destination</label>
     <input id="f-number" name="number" type="search" value="{{shown['number']}}" placeholder="+44 or +4420*" inputmode="tel"></p>
  <p><label for="f-caller">Caller starts with</label>
     <input id="f-caller" name="caller" type="search" value="{{shown['caller']}}" inputmode="tel"></p>
  <p><label for="f-destination">Destination starts with</label>
     <input id="f-destination" name="destination" type="search" value="{{shown['destination']}}" inputmode="tel"></p>
  <p><label for="f-outcome">Answer</label>
     <select id="f-outcome" name="outcome">
       <option value="">any</option>
     % for o in outcomes:
       <option value="{{o}}"{{!' selected' if shown['outcome'] == o else ''}}>{{o}}</option>
     % end
     </select></p>
  <p><label for="f-rule">Deciding rule</label>
     <select id="f-rule" name="rule">
       <option value="">any</option>
     % for r in rules:
       <option value="{{r}}"{{!' selected' if shown['rule'] == r else ''}}>{{r}}</option>
     % end
     </select></p>
  <p><label for="f-plugin">Deciding plugin</label>
     <select id="f-plugin" name="plugin">
       <option value="">any</option>
     % for name in plugin_names:
       <option value="{{name}}"{{!' selected' if shown['plugin'] == name else ''}}>{{name}}</option>
     % end
     </select></p>
  <p><label for="f-since">From (UTC)</label>
     <input id="f-since" name="since" type="datetime-local" value="{{shown['since']}}"></p>
  <p><label for="f-until">Until (UTC)</label>
     <input id="f-until" name="until" type="datetime-local" value="{{shown['until']}}"></p>
  <p><label class="check"><input type="checkbox" name="duplicates" value="1"{{!' checked' if shown['duplicates'] else ''}}> with redelivered callbacks</label>
     <label class="check"><input type="checkbox" name="fallbacks" value="1"{{!' checked' if shown['fallbacks'] else ''}}> answered with a fallback</label></p>
  <p class="actions"><button type="submit">Show calls</button>
  % if filtered:
     <a href="{{c.base}}/calls">Clear the filters</a>
  % end
  </p>
</form>
% for problem in problems:
<p class="flash error" role="alert">{{problem}}</p>
% end
% if page.scanned_to is not None:
<p class="flash" id="scanned" role="status">Looked through the calls back to <time datetime="{{h.iso(page.scanned_to)}}">{{h.when(page.scanned_to)}}</time> and stopped there to keep this page quick: {{'these are the matching calls found so far' if page.rows else 'none of them match'}}. <a href="{{c.url('/calls', after=page.next, **shown)}}">Look further back</a></p>
% end
% if not page.rows:
<p class="empty" id="no-calls">No calls{{' match these filters' if filtered else ' recorded yet'}}{{'' if first else ' on this page'}}{{'' if page.scanned_to is None else ' in the calls looked at'}}.</p>
% else:
<div class="scroll">
<table class="calls stack">
<caption class="sr">Calls, newest first</caption>
<thead><tr>
  <th scope="col">Started (UTC)</th><th scope="col">Caller</th><th scope="col">Destination</th>
  <th scope="col">Answer</th><th scope="col">Decided by</th><th scope="col" class="num">Cap</th>
  <th scope="col" class="num">Duration</th><th scope="col">Charge</th><th scope="col">More</th>
</tr></thead>
<tbody>
% for r in page.rows:
<tr>
  <td data-label="Started"><a href="{{c.url(h.call_path(r.callid))}}" class="call-link" title="call {{r.callid}}"><time datetime="{{h.iso(r.started_at)}}">{{h.when(r.started_at)}}</time></a><br><span class="meta mono">{{r.callid[:13]}}</span></td>
  <td data-label="Caller" class="mono">{{r.caller or '-'}}</td>
  <td data-label="Destination" class="mono">{{r.destination or '-'}}</td>
  <td data-label="Answer"><span class="badge {{r.answer or 'pending'}}">{{r.answer or 'deciding'}}</span>
  % if r.fallback:
    <span class="badge fallback">fallback</span>
  % end
  </td>
  <td data-label="Decided by">{{r.rule or '-'}}{{': ' + ', '.join(r.decided_by) if r.decided_by else ''}}</td>
  <td data-label="Cap" class="num">{{'%d s' % r.capped_at if r.capped_at is not None else '-'}}{{' (' + r.capped_by + ')' if r.capped_by else ''}}</td>
  <td data-label="Duration" class="num">{{h.seconds(r.duration) if r.duration is not None else '-'}}{{' ' + r.result if r.result and r.result != 'ANSWERED' else ''}}</td>
  <td data-label="Charge">{{r.details.get('charge', '-')}}</td>
  <td data-label="More">
  % if r.duplicates:
    <span class="badge duplicate">{{r.duplicates}} redelivered</span>
  % end
    <ul class="details">
  % for label, text in r.details.items():
    % if label != 'charge':
      <li><span class="label">{{label}}</span> {{text}}</li>
    % end
  % end
    </ul>
  </td>
</tr>
% end
</tbody>
</table>
</div>
% end
<nav class="pager" aria-label="Pages">
% if not first:
  <a href="{{c.url('/calls', **shown)}}">Newest</a>
% end
% if page.next:
  <a href="{{c.url('/calls', after=page.next, **shown)}}" rel="next">{{'Older calls' if page.scanned_to is None else 'Look further back'}}</a>
% end
</nav>
