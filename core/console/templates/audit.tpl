% rebase('layout', c=c, title=title)
<p>Every change made from the console: who, when, from where, what, and how it ended. Newest first.</p>
% if not entries:
<p class="empty">Nothing recorded{{'' if first else ' before this'}}.</p>
% else:
<div class="scroll">
<table>
<thead><tr><th scope="col">When</th><th scope="col">Who</th><th scope="col">Action</th><th scope="col">On</th><th scope="col">Outcome</th><th scope="col">What happened</th><th scope="col">From</th></tr></thead>
<tbody>
% for e in entries:
<tr>
  <td><time datetime="{{h.iso(e.at)}}">{{h.when(e.at)}}</time></td>
  <td>{{e.actor}}</td>
  <td><code>{{e.action}}</code></td>
  <td>{{e.target or '-'}}</td>
  <td><span class="badge {{e.outcome}}">{{e.outcome}}</span></td>
  <td>{{e.detail or ''}}</td>
  <td>{{e.address or ''}}</td>
</tr>
% end
</tbody>
</table>
</div>
% end
<nav class="pager" aria-label="Pages">
% if not first:
<a href="{{c.url('/audit')}}">Newest</a>
% end
% if more:
<a href="{{c.url('/audit', before=repr(more))}}" rel="next">Older</a>
% end
</nav>
