% rebase('layout', c=c, title=title)
% if body is None:
<p class="flash error" role="alert">This page of the plugin {{plugin}} failed; the server log has the details.</p>
% else:
<div class="plugin-page">
{{!body}}
</div>
% end
