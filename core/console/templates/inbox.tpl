% rebase('layout', c=c, title=title)
<p>DiCE and Notify callbacks answered <code>200</code> whose plugins' work has not all succeeded yet:
waiting for a retry, or <strong>parked</strong> after {{retry_attempts}} attempts (<code>policy.retry_attempts</code>) for an operator.
A retry runs only the plugins that have not succeeded.</p>
<ul class="figures">
  <li><span class="figure">{{counts.get('retry', 0)}}</span> waiting for a retry</li>
  <li><span class="figure">{{counts.get('parked', 0)}}</span> parked</li>
  <li><span class="figure">{{counts.get('pending', 0)}}</span> being processed</li>
</ul>
% if not items:
<p class="empty">Nothing is waiting.</p>
% else:
<form method="post" action="{{c.base}}/inbox/retry" class="inline">
  <input type="hidden" name="_csrf" value="{{c.csrf}}">
  <input type="hidden" name="all" value="1">
  <button type="submit">Retry all waiting and parked work now</button>
</form>
<div class="scroll">
<table>
<thead><tr><th scope="col">Call</th><th scope="col">Event</th><th scope="col">State</th><th scope="col">Attempts</th><th scope="col">Plugins done</th><th scope="col">Next attempt</th><th scope="col">Last error</th><th scope="col"><span class="sr">Action</span></th></tr></thead>
<tbody>
% for w in items:
<tr>
  <td><a href="{{c.url(h.call_path(w.callid))}}">{{w.callid or '(no call id)'}}</a></td>
  <td>{{w.event}}</td>
  <td><span class="badge {{w.state}}">{{'being processed' if w.busy else w.state}}</span></td>
  <td>{{w.attempts}}</td>
  <td>{{', '.join(w.done) or '-'}}</td>
  <td>{{h.when(w.next_at) if w.state == 'retry' else '-'}}</td>
  <td class="error-text">{{w.last_error or '-'}}</td>
  <td>
  % if not w.busy:
    <form method="post" action="{{c.base}}/inbox/retry" class="inline">
      <input type="hidden" name="_csrf" value="{{c.csrf}}">
      <input type="hidden" name="callid" value="{{w.callid}}">
      <input type="hidden" name="event" value="{{w.event}}">
      <input type="hidden" name="sub" value="{{w.sub}}">
      <button type="submit">Retry <span class="sr">{{w.event}} of {{w.callid}}</span> now</button>
    </form>
  % end
  </td>
</tr>
% end
</tbody>
</table>
</div>
% if more:
<p>Only the first {{len(items)}} are listed.</p>
% end
% end
