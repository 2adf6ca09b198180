% rebase('layout', c=c, title=title)
<p>Every configuration a server loads on this store (at its start and at each reload) is a revision: a digest of the settings that decide answers, secrets redacted. Every call's trace names the revision that decided it. The running configuration is revision <a href="{{c.url('/revisions', show=running)}}" class="mono">{{running}}</a>.</p>
% for problem in problems:
<p class="flash error" role="alert">{{problem}}</p>
% end
% if len(choices) > 1:
<form method="get" action="{{c.base}}/revisions" class="filters card" aria-label="Compare two revisions">
  <p><label for="v-old">From revision</label>
     <select id="v-old" name="old">
     % for rev in choices:
       <option value="{{rev}}"{{!' selected' if changes and changes[0] == rev else ''}}>{{rev}}{{' (running)' if rev == running else ''}}</option>
     % end
     </select></p>
  <p><label for="v-new">To revision</label>
     <select id="v-new" name="new">
     % for rev in choices:
       <option value="{{rev}}"{{!' selected' if (changes[1] == rev if changes else rev == running) else ''}}>{{rev}}{{' (running)' if rev == running else ''}}</option>
     % end
     </select></p>
  <p class="actions"><button type="submit">Show what differs</button></p>
</form>
% end
% if changes is not None:
<section class="card" aria-labelledby="diff" id="revision-changes">
<h2 id="diff">From <span class="mono">{{changes[0]}}</span> to <span class="mono">{{changes[1]}}</span></h2>
% if changes[2]:
<ul class="changes mono">
  % for line in changes[2]:
  <li>{{line}}</li>
  % end
</ul>
% else:
<p class="empty">No setting differs.</p>
% end
</section>
% end
% if shown is not None:
<section class="card" aria-labelledby="content" id="revision-content">
<h2 id="content">Revision <span class="mono">{{shown[0]}}</span>{{' (running)' if shown[0] == running else ''}}</h2>
<pre class="json">{{pretty(shown[1])}}</pre>
</section>
% end
<h2>Loads, newest first</h2>
% if not loads:
<p class="empty">No configuration load is recorded on this store.</p>
% else:
<div class="scroll">
<table class="stack" id="loads">
<caption class="sr">Configuration loads, newest first</caption>
<thead><tr><th scope="col">Loaded (UTC)</th><th scope="col">Revision</th><th scope="col">How</th><th scope="col">Server</th><th scope="col">Changes</th></tr></thead>
<tbody>
% for i, x in enumerate(loads):
<tr{{!' class="running"' if x.revision == running else ''}}>
  <td data-label="Loaded"><time datetime="{{h.iso(x.loaded_at)}}">{{h.when(x.loaded_at)}}</time></td>
  <td data-label="Revision"><span><a href="{{c.url('/revisions', show=x.revision)}}" class="mono">{{x.revision}}</a>
  % if x.revision == running:
    <span class="badge ok">running</span>
  % end
  </span></td>
  <td data-label="How">{{x.how}}</td>
  <td data-label="Server" class="mono">{{x.instance or '-'}}</td>
  <td data-label="Changes">
  % if i in previous:
    <a href="{{c.url('/revisions', old=previous[i], new=x.revision)}}">from {{previous[i]}}</a>
  % else:
    -
  % end
  </td>
</tr>
% end
</tbody>
</table>
</div>
% end
